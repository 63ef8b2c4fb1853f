"""The request intake both paths share: authenticate the key, check the operation's scope, accept the body.

The fast lane (``middleware/fast_lane.py``) and Connexion's security handler (``security.py``) and
body validator (``validators.py``) call these, so a request is taken in one way whichever path
serves it. The body is parsed once: the document BodyGuardMiddleware parsed is reused, and the
model instance the bytes validated as travels on in the request state beside it.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Span
from pydantic import BaseModel

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.web.json_body import parse_json
from router_impl.web.request_state import RequestState


async def authenticate(
    authenticator: Authenticator,
    credential: str,
    scope: str | None,
    state: RequestState | None,
    span: Span | None = None,
) -> Principal:
    """The key's principal with the operation's ``scope``, or the catalog's 401 / 403. Who it is goes
    on the request state (and the span) before the scope is checked, so a 403 is logged with it."""
    principal = await authenticator.authenticate(credential)
    if span is not None:
        span.set_attribute("router.organization_id", principal.organization_id)
        span.set_attribute("router.api_key_id", principal.key_id)
    if state is not None:
        state.organization_id, state.api_key_id = principal.organization_id, principal.key_id
    authenticator.authorize(principal, scope)
    return principal


def accept_body(model: type[BaseModel], raw: bytes, state: RequestState | None) -> Any:
    """The parsed body once ``raw`` validates (strict) as ``model``; pydantic's ValidationError if not.
    The validated instance is kept as ``state.accepted``, the document as ``state.document``."""
    accepted = model.model_validate_json(raw, strict=True)
    if state is not None and state.document is not None and (state.body is raw or state.body == raw):
        document = state.document  # parsed once, by BodyGuardMiddleware
    else:
        document = parse_json(raw)
    if state is not None:
        state.document, state.accepted = document, accepted
    return document
