"""A structlog processor that blanks secrets in any event: defence in depth behind never logging them.

Tracebacks are rendered without frame locals (``configure_logging``), so a request's headers, body
and freshly minted secrets never reach a log line through a crash. Should a secret still slip into
an event -- a field named like one, an exception message, a library's message -- this processor
replaces it: values of secret-named fields, API keys (``rk_``/``rk-``), signing secrets (``rs_``),
and the values after ``Bearer``, ``X-API-Key``, ``X-Signature`` and ``secret=``-style assignments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_FIELDS = frozenset(
    {
        "secret",
        "signing_secret",
        "api_key",
        "apikey",
        "x_api_key",
        "x-api-key",
        "password",
        "token",
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-signature",
        "x_signature",
        "hmac_signature",
        "secret_key",
    }
)
_SECRET_SUFFIXES = ("_secret", "_password", "_token", "-token", "-secret")
_PATTERNS = (
    # Keys and signing secrets by their public markers; demo keys use a hyphen (rk-demo-key).
    (re.compile(r"\b(?:rk|rs)[_-][A-Za-z0-9_.~+/=-]{3,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+"), r"\1" + REDACTED),
    (
        re.compile(
            r"(?i)\b((?:x-api-key|x_api_key|api_key|x-signature|authorization|(?:signing_)?secret|password|token)"
            r"['\"]?\s*[:=,]\s*b?['\"]?)[^\s'\",;)}\]]+"
        ),
        r"\1" + REDACTED,
    ),
)
_MAX_DEPTH = 8


def _is_secret_field(name: object) -> bool:
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return lowered in _SECRET_FIELDS or lowered.endswith(_SECRET_SUFFIXES)


# One cheap search decides whether a string needs the substitutions at all (most do not).
_SUSPECT = re.compile(r"(?:rk|rs)[_-]|(?i:bearer|api.key|signature|authorization|secret|password|token)")


def redact_text(text: str) -> str:
    if _SUSPECT.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool) or value is None else REDACTED
    if isinstance(value, Mapping):
        return {
            k: REDACTED if _is_secret_field(k) and v is not None else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("latin-1"))
    return value


def redact_secrets(_: Any, __: str, event_dict: Any) -> Any:
    """structlog processor: runs after tracebacks are rendered, before the JSON renderer."""
    return _redact(event_dict, 0)
