"""The current request, as handlers see it: the ASGI scope RequestContextMiddleware recorded.

Our own context variable (not Connexion's), so a handler works the same whether Connexion or
the fast lane calls it. A handler reads it once, as a frozen ``RequestContext``, and passes that on.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from router_impl.web.request_state import RequestState, state_of

CURRENT_SCOPE: ContextVar[Scope] = ContextVar("router_current_scope")


def current_state() -> RequestState:
    state = state_of(CURRENT_SCOPE.get())
    if state is None:  # the request-context middleware always sets it; this is a wiring bug
        raise RuntimeError("RequestContextMiddleware is not installed")
    return state


def current_document() -> dict[str, Any]:
    """The request body, validated against the contract's model (handlers never parse it again)."""
    document = current_state().document
    if not isinstance(document, dict):
        raise RuntimeError("the operation's body was not validated by a generated model")
    return document


def current_header(name: bytes) -> str | None:
    for key, value in CURRENT_SCOPE.get()["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def current_method_and_path() -> tuple[str, str]:
    scope = CURRENT_SCOPE.get()
    return str(scope["method"]), str(scope["path"])


def current_scope() -> Scope:
    return CURRENT_SCOPE.get()


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request as the intake accepted it: ids, route, body (raw, parsed and validated), headers."""

    method: str
    path: str
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


def request_context() -> RequestContext:
    scope = CURRENT_SCOPE.get()
    state = current_state()
    return RequestContext(
        method=str(scope["method"]),
        path=str(scope["path"]),
        request_id=state.request_id,
        trace_id=state.trace_id,
        span_id=state.span_id,
        body=state.body,
        document=state.document,
        accepted=state.accepted,
        headers=tuple(scope["headers"]),
        state=state,
    )
