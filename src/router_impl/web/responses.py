"""JSON responses and error responses, rendered once through the error catalog."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Scope, Send

from router_impl.errors import ApiError, render
from router_impl.web.request_state import state_of

JSON = "application/json"


def timestamp(value: datetime) -> str:
    """The wire form of a time: ISO 8601 in UTC with a ``Z`` (a time without a zone is UTC)."""
    moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def error_parts(scope: Scope, error: ApiError) -> tuple[bytes, dict[str, str]]:
    state = state_of(scope)
    trace_id = state.trace_id if state else secrets.token_hex(16)
    if state is not None:
        state.error_code = error.code
    body = render(
        error,
        trace_id=trace_id,
        request_id=state.request_id if state else None,
        openai=bool(state and state.openai),
    )
    return body, error.headers


def error_response(scope: Scope, error: ApiError) -> Response:
    body, headers = error_parts(scope, error)
    return Response(body, status_code=error.status_code, headers=headers, media_type=JSON)


async def send_error(scope: Scope, send: Send, error: ApiError, *, close: bool = False) -> None:
    """Answer directly from a pure-ASGI middleware, before the app has seen the request. ``close``:
    the request's body was not read to its end, so the connection ends with the answer."""
    body, headers = error_parts(scope, error)
    raw = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})
