"""Binds the contract's security schemes (X-API-Key, Bearer) to our Authenticator and SignatureGate.

Connexion instantiates security handlers itself; the classes here are given the
check function at start-up through ``security_map``, so no spec-level function names
or module globals are involved. The check refuses a request that presents two different keys,
authenticates and checks the operation's scope (``intake.authenticate``, as the fast lane does),
then verifies any request signature over the body BodyGuardMiddleware buffered, in one
``authenticate`` span; the principal's organisation and key id go on the request state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any

from connexion.lifecycle import ConnexionRequest
from connexion.security import ApiKeySecurityHandler, BearerSecurityHandler
from router_contract.operations import Operation

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.signature_gate import SignatureGate, SignedRequest
from router_impl.auth.signing import body_signature_of
from router_impl.errors import ApiError
from router_impl.telemetry.tracing import Tracing
from router_impl.web.intake import authenticate
from router_impl.web.request_state import state_of

Check = Callable[..., Awaitable[dict[str, Any]]]
_INFERENCE_PATH = "/v1/inference"
_AMBIGUOUS = "Send one API key, in X-API-Key or as a Bearer token, not two different ones."


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Every distinct credential a request carries: each X-API-Key value and each Authorization
    value (its token when the scheme is Bearer), blank ones left out. Which of two different keys
    would decide is a guess (Connexion takes the first header of the first scheme that passes), and a
    key a proxy adds must not lend its rights to a request that carries another: more than one is
    refused."""
    keys: set[bytes] = set()
    for name, value in headers:
        if name == b"authorization":
            parts = value.split(maxsplit=1)
            value = parts[1] if len(parts) == 2 and parts[0].lower() == b"bearer" else value
        elif name != b"x-api-key":
            continue
        if value.strip():
            keys.add(value.strip())
    return keys


class _BoundApiKey(ApiKeySecurityHandler):  # type: ignore[misc]
    def __init__(self, check: Check) -> None:
        self._check = check

    def _resolve_func(self, security_scheme: Any) -> Check:
        return self._check


class _BoundBearer(BearerSecurityHandler):  # type: ignore[misc]
    def __init__(self, check: Check) -> None:
        self._check = check

    def _resolve_func(self, security_scheme: Any) -> Check:
        return self._check


def security_map(
    authenticator: Authenticator,
    signatures: SignatureGate,
    operations: Mapping[str, Operation],
    tracing: Tracing | None = None,
) -> dict[str, Any]:
    tracer = tracing or Tracing()

    async def check(credential: str, request: ConnexionRequest) -> dict[str, Any]:
        scope = request.scope
        state = state_of(scope)
        routing = scope.get("extensions", {}).get("connexion_routing", {})
        operation = operations.get(routing.get("operation_id", ""))
        with tracer.span("authenticate") as span:
            if len(presented_keys(scope["headers"])) > 1:
                raise ApiError("AUTH_INVALID", _AMBIGUOUS)
            needed = operation.scope if operation else "admin"
            principal = await authenticate(authenticator, credential, needed, state, span)
            body = state.body if state is not None else b""
            await signatures.verify(
                principal,
                SignedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    body=body,
                    timestamp_header=request.headers.get("x-signature-timestamp"),
                    signature_header=request.headers.get("x-signature"),
                    payload_signature=body_signature_of(body) if scope["path"] == _INFERENCE_PATH else None,
                ),
            )
        return {"sub": principal.key_id, "principal": principal}

    return {"apiKey": partial(_BoundApiKey, check), "bearer": partial(_BoundBearer, check)}
