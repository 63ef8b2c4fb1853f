"""The machine-readable code of an error answer, in either shape: OpenAI's ``{"error": {...}}`` on the
OpenAI routes, the contract's ErrorResponse (``{"code": ..., ...}``) everywhere else."""

from __future__ import annotations

from typing import Any

import httpx


def error_code(answer: httpx.Response | Any) -> str | None:
    """The code of a response or of its decoded body; None when the body holds no error code."""
    document = answer.json() if isinstance(answer, httpx.Response) else answer
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    code = error.get("code") if isinstance(error, dict) else document.get("code")
    return None if code is None else str(code)
