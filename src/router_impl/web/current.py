"""The current request as handlers receive it: a frozen ``RequestContext`` built from the ASGI scope.

RequestContextMiddleware records the scope in our own context variable (not Connexion's); the
resolver's binding (``web/resolver.py``) is the one place that reads it, so a handler is an
ordinary function of its arguments, called the same whether Connexion or the fast lane serves it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from router_impl.web.request_state import RequestState, state_of

CURRENT_SCOPE: ContextVar[Scope] = ContextVar("router_current_scope")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request as the intake accepted it: ids, route, peer, body (raw, parsed, validated), headers."""

    method: str
    path: str
    client: str  # the peer's address, "unknown" when the server gives none
    request_id: str
    trace_id: str
    span_id: str
    body: bytes
    document: Any
    accepted: Any  # the generated model's instance (web/intake.py)
    headers: tuple[tuple[bytes, bytes], ...]
    state: RequestState  # where the handler reports what the outer middleware logs

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def json_body(self) -> dict[str, Any]:
        """The body, validated against the contract's model (handlers never parse it again)."""
        if not isinstance(self.document, dict):
            raise RuntimeError("the operation's body was not validated by a generated model")
        return self.document


def request_context(scope: Scope) -> RequestContext:
    """The request ``scope`` holds, frozen: what a handler receives as its ``request`` argument."""
    state = state_of(scope)
    if state is None:  # the request-context middleware always sets it; this is a wiring bug
        raise RuntimeError("RequestContextMiddleware is not installed")
    client = scope.get("client")
    return RequestContext(
        method=str(scope["method"]),
        path=str(scope["path"]),
        client=str(client[0]) if client else "unknown",
        request_id=state.request_id,
        trace_id=state.trace_id,
        span_id=state.span_id,
        body=state.body,
        document=state.document,
        accepted=state.accepted,
        headers=tuple(scope["headers"]),
        state=state,
    )
