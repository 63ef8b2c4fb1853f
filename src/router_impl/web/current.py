"""The current request, as handlers see it: our RequestState and raw headers, via Connexion's context."""

from __future__ import annotations

from typing import Any

from connexion.context import scope as _scope

from router_impl.web.request_state import RequestState, state_of


def current_state() -> RequestState:
    state = state_of(_scope)
    if state is None:  # the request-context middleware always sets it; this is a wiring bug
        raise RuntimeError("RequestContextMiddleware is not installed")
    return state


def current_document() -> dict[str, Any]:
    """The request body, validated against the contract's model (handlers never parse it again)."""
    document = current_state().document
    if not isinstance(document, dict):
        raise RuntimeError("the operation's body was not validated by ModelBodyValidator")
    return document


def current_header(name: bytes) -> str | None:
    for key, value in _scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def current_method_and_path() -> tuple[str, str]:
    return str(_scope["method"]), str(_scope["path"])
