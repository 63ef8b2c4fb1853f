"""The current request, as handlers see it: the ASGI scope RequestContextMiddleware recorded.

Our own context variable (not Connexion's), so a handler works the same whether Connexion or
the fast lane calls it.
"""

from __future__ import annotations

from contextvars import ContextVar
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
