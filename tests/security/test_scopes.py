"""Every operation that needs a scope refuses a key without it (403 FORBIDDEN) before doing anything:
taken from the contract's operation table, so an operation added later is covered too. Refused admin
writes change nothing, and no backend is called."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from router_contract.operations import OPERATIONS, Operation

from tests.e2e.conftest import KEYS, MODEL, ObservedBackend, auth
from tests.harness.errors import error_code
from tests.harness.router_proc import RouterProcess

# For each scope, keys of the same organisation that hold every other scope but that one.
WITHOUT: dict[str, tuple[str, ...]] = {
    "admin": ("user", "audit"),
    "audit": ("admin", "restricted"),
    "inference": ("admin", "audit"),
}
PATH_VALUES = {
    "backendId": "mock-a",
    "model": MODEL,
    "orgId": "org-e2e",
    "keyId": "key-user",
    "requestId": "any-request",
}
# Read with the admin key before and after: the refused writes must leave all of it as it was.
ADMIN_STATE = ("/v1/admin/backends", "/v1/admin/models", "/v1/admin/keys", "/v1/admin/orgs/org-e2e/limits")

SCOPED = sorted((op for op in OPERATIONS.values() if op.scope is not None), key=lambda op: op.operation_id)


def test_the_contract_scopes_every_admin_audit_and_inference_operation() -> None:
    for op in OPERATIONS.values():
        if op.path.startswith("/v1/admin/"):
            assert op.scope == "admin", op.operation_id
        elif op.path.startswith("/v1/audit/"):
            assert op.scope == "audit", op.operation_id
    assert {op.scope for op in SCOPED} == set(WITHOUT)


def _request(op: Operation) -> dict[str, Any]:
    path = op.path.format(**{name: PATH_VALUES[name] for name in PATH_VALUES if f"{{{name}}}" in op.path})
    request: dict[str, Any] = {"method": op.method, "url": path}
    if op.has_body:  # well-formed enough to be served, were the key allowed
        request["json"] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    return request


def _admin_state(http: httpx.Client) -> list[Any]:
    return [http.get(path, headers=auth(KEYS["admin"])).json() for path in ADMIN_STATE]


@pytest.mark.parametrize("op", SCOPED, ids=lambda op: op.operation_id)
def test_a_key_without_the_scope_is_forbidden_and_nothing_happens(
    router: RouterProcess, mock: ObservedBackend, op: Operation
) -> None:
    with httpx.Client(base_url=router.base_url, trust_env=False, timeout=10) as http:
        before = _admin_state(http)
        calls = mock.inference_requests
        assert op.scope is not None
        for holder in WITHOUT[op.scope]:
            answer = http.request(**_request(op), headers=auth(KEYS[holder]))
            assert (answer.status_code, error_code(answer)) == (403, "FORBIDDEN"), (holder, answer.text)
            assert "application/json" in answer.headers["content-type"]
        assert mock.inference_requests == calls
        assert _admin_state(http) == before
