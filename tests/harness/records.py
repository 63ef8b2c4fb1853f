"""Usage records as consumers see them: which request a record belongs to."""

from __future__ import annotations

from typing import Any


def request_ref(record: dict[str, Any]) -> Any:
    """The request id a client sent. One that is not a UUID (an ``X-Request-ID`` such as ``kill-7``)
    is in the record as its UUIDv5, for the original schema's ``format: uuid``, and itself in
    ``metadata.request_ref``."""
    return (record.get("metadata") or {}).get("request_ref") or record.get("request_id")
