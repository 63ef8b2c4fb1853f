"""The fast lane: the certain happy path of the hot operations, served without Connexion's plumbing.

Built at start-up from the same generated operation table, handlers, authenticator and models;
it takes a request in through the same intake as Connexion's path (``web/intake.py``).
It serves a request only when it is certain Connexion would reach the handler with the same
inputs: exact route, ``application/json``, no query string, a valid key with the operation's
scope, no signature material (signatures are verified on the Connexion path, where a nonce is
spent exactly once), well-formed header parameters, and a body the generated model accepts.
Anything else passes to Connexion untouched -- nothing was consumed and no state changed -- so
every error is still produced there. Once the handler runs, the lane answers, errors included,
through the same renderer Connexion's error handlers use. The handler receives the frozen
request context built from the scope by the same function as on Connexion's path (``web/current.py``).

Spec features it does not support make it refuse to start (fail closed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import router_contract.models as contract_models
import structlog
from pydantic import BaseModel, ValidationError
from router_contract.operations import Operation
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.errors import ApiError
from router_impl.telemetry.tracing import Tracing
from router_impl.web.current import request_context
from router_impl.web.intake import accept_body, authenticate
from router_impl.web.request_state import state_of
from router_impl.web.responses import error_response

log = structlog.get_logger("router.fast_lane")

FAST_OPERATIONS = ("createChatCompletion", "createCompletion", "routeInference")
# Header parameters the lane checks itself; any other declared header parameter is unsupported.
_IDEMPOTENCY_KEY = re.compile(rb"^[!-~]{1,255}$")
_SUPPORTED_HEADERS = frozenset({"idempotency-key", "x-signature", "x-signature-timestamp"})
_SIGNATURE_HEADERS = frozenset({b"x-signature", b"x-signature-timestamp"})
_JSON = b"application/json"
_READ_ONCE = frozenset({b"x-api-key", b"authorization", b"content-type"})
_PAYLOAD_SIGNATURE = "hmac_signature"  # the body's signature field: verified on the Connexion path

Handler = Callable[..., Awaitable[Response]]


class FastLaneUnsupported(Exception):
    """The contract uses a feature the fast lane cannot prove equivalent to Connexion for."""


@dataclass(frozen=True)
class FastRoute:
    operation: Operation
    handler: Handler
    model: type[BaseModel]
    scope: str


def build_routes(operations: Mapping[str, Operation], bind: Callable[[str], Handler]) -> dict[str, FastRoute]:
    """Routes for the fast operations, or FastLaneUnsupported when the contract outgrew the lane."""
    routes: dict[str, FastRoute] = {}
    for operation_id in FAST_OPERATIONS:
        op = operations[operation_id]
        if op.stub:
            continue  # nothing to speed up yet; Connexion answers 501
        if op.method != "POST" or op.params or "{" in op.path:
            raise FastLaneUnsupported(f"{operation_id}: path or query parameters")
        if not set(op.header_params) <= _SUPPORTED_HEADERS:
            raise FastLaneUnsupported(f"{operation_id}: header parameters {op.header_params}")
        model = getattr(contract_models, op.body_model or "", None)
        if not isinstance(model, type) or not issubclass(model, BaseModel) or op.scope is None:
            raise FastLaneUnsupported(f"{operation_id}: needs a JSON body model and a scope")
        routes[op.path] = FastRoute(op, bind(operation_id), model, op.scope)
    return routes


def _credential(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """(credential, eligible): the key as Connexion's schemes would read it, or ineligible."""
    read: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _READ_ONCE:
            # A repeated credential or media type goes to Connexion, so that one reading (its) decides.
            if name in read:
                return None, False
            read[name] = value
        elif name in _SIGNATURE_HEADERS or (name == b"idempotency-key" and not _IDEMPOTENCY_KEY.match(value)):
            return None, False
    if read.get(b"content-type") != _JSON or (b"x-api-key" in read and b"authorization" in read):
        return None, False  # two credentials: Connexion's check refuses two different ones
    api_key = read.get(b"x-api-key")
    if api_key is not None:
        return api_key.decode("latin-1"), True
    authorization = read.get(b"authorization")
    if authorization is not None:
        parts = authorization.split(maxsplit=1)
        if len(parts) == 2 and parts[0].lower() == b"bearer":
            return parts[1].decode("latin-1"), True
    return None, False


class FastLaneMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, FastRoute],
        authenticator: Authenticator,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.authenticator = authenticator
        self.tracing = tracing or Tracing()
        self.served = 0  # for tests and diagnostics: requests the lane answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        principal = await self._admit(route, scope)
        if principal is None:
            await self.app(scope, receive, send)
            return
        self.served += 1
        try:
            response = await route.handler(
                request_context(scope), token_info={"sub": principal.key_id, "principal": principal}
            )
        except ApiError as exc:
            response = error_response(scope, exc)
        except Exception as exc:
            log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
            response = error_response(scope, ApiError("INTERNAL_ERROR"))
        await response(scope, receive, send)

    async def _admit(self, route: FastRoute, scope: Scope) -> Principal | None:
        """The principal when the request is on the certain happy path; None to hand it to Connexion."""
        credential, eligible = _credential(scope["headers"])
        state = state_of(scope)
        if not eligible or credential is None or state is None or not state.body:
            return None
        started_ns = time.time_ns()
        try:
            principal = await authenticate(self.authenticator, credential, route.scope, state)
        except ApiError:
            return None
        authenticated_ns = time.time_ns()
        if principal.signature_required:
            return None
        try:
            document = accept_body(route.model, state.body, state)
        except ValidationError:
            return None
        if isinstance(document, dict) and _PAYLOAD_SIGNATURE in document:
            # Decided on the parsed body, as Connexion's security check reads it: an escaped key
            # ("hmac\u005fsignature") is the same field and must not skip its verification.
            return None
        if self.tracing.enabled:
            # Recorded only once the lane takes the request: on a hand-over Connexion authenticates
            # again and records its own span, so each request shows one ``authenticate`` span.
            self.tracing.finished_span(
                "authenticate",
                started_ns,
                authenticated_ns,
                {"router.organization_id": principal.organization_id, "router.api_key_id": principal.key_id},
            )
        return principal
