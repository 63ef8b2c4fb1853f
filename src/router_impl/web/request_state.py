"""Per-request identifiers kept in the ASGI scope: request id, W3C trace context, the caller's identity."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
STATE_KEY = "router"


@dataclass(slots=True)
class RequestState:
    request_id: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    openai: bool
    # The raw request body, once BodyGuardMiddleware has read it (for signatures and handlers).
    body: bytes = b""
    # The parsed JSON body, once the body validator has checked it against the generated model.
    document: Any = None
    # The generated model's instance the body validated as (web/intake.py), beside ``document``.
    accepted: Any = None
    # The machine-readable code of the error this request was answered with, if any (metrics).
    error_code: str | None = None
    # The W3C trace-flags of the caller's traceparent (0 without one): its sampling decision.
    parent_flags: int = 0
    # Who the request authenticated as, once the security check has run (logs and spans; ids only).
    organization_id: str | None = None
    api_key_id: str | None = None
    # The backend that answered and the routing decision, as the handler reports them (logs, span).
    backend_id: str | None = None
    decision: str | None = None


def new_state(
    headers: list[tuple[bytes, bytes]], *, openai: bool, random_hex: Callable[[int], str] = secrets.token_hex
) -> RequestState:
    """Take X-Request-ID and traceparent from the client when well-formed, otherwise mint them.

    Raw client input is never echoed back unless it matches a strict pattern.
    """
    request_id: str | None = None
    trace_id: str | None = None
    parent: str | None = None
    flags = 0
    for name, value in headers:
        if name == b"x-request-id" and _SAFE_REQUEST_ID.match(value):
            request_id = value.decode("ascii")
        elif name == b"traceparent":
            match = _TRACEPARENT.match(value.strip().lower())
            if match and match.group(1) != b"0" * 32 and match.group(2) != b"0" * 16:
                trace_id, parent = match.group(1).decode(), match.group(2).decode()
                flags = int(match.group(3), 16)
    return RequestState(
        request_id=request_id or str(uuid.uuid4()),
        trace_id=trace_id or random_hex(16),
        span_id=random_hex(8),
        parent_span_id=parent,
        openai=openai,
        parent_flags=flags,
    )


def state_of(scope: Any) -> RequestState | None:
    state = scope.get("state") or {}
    found = state.get(STATE_KEY)
    return found if isinstance(found, RequestState) else None
