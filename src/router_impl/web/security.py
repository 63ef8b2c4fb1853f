"""Binds the contract's security schemes (X-API-Key, Bearer) to our Authenticator.

Connexion instantiates security handlers itself; the classes here are given the
check function at start-up through ``security_map``, so no spec-level function names
or module globals are involved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from connexion.lifecycle import ConnexionRequest
from connexion.security import ApiKeySecurityHandler, BearerSecurityHandler
from router_contract.operations import Operation

from router_impl.auth.authenticator import Authenticator

Check = Callable[..., Awaitable[dict[str, Any]]]


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


def security_map(authenticator: Authenticator, operations: Mapping[str, Operation]) -> dict[str, Any]:
    async def check(credential: str, request: ConnexionRequest) -> dict[str, Any]:
        principal = await authenticator.authenticate(credential)
        routing = request.scope.get("extensions", {}).get("connexion_routing", {})
        operation = operations.get(routing.get("operation_id", ""))
        authenticator.authorize(principal, operation.scope if operation else "admin")
        return {"sub": principal.key_id, "principal": principal}

    return {"apiKey": partial(_BoundApiKey, check), "bearer": partial(_BoundBearer, check)}
