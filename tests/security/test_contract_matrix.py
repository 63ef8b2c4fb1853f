"""Classes, not instances: every operation of the contract x request-target variants x methods x
media types, on the fast lane and on the Connexion path, must give documented, identical answers.

The cases are generated from the operation table (generated/router_contract/operations.py) and the
bundled spec: paths with their parameters filled in, the documented statuses of each operation,
and each request body's example (or a sample below, itself checked against the generated model).
Both apps are the same router in process (demo mode), one built with ROUTER_FAST_LANE=false. An
answer is acceptable when it is not a 5xx, not a redirect, a status the contract documents for the
operation (or 400/404/405 for a target or method that matches none), in the error shape with a
``code`` when it is an error, and the same status and code on both paths. A body the model refuses
never reaches a handler, whatever its media type is called.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import router_contract.models as contract_models
import yaml
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS, Operation

from tests.security.inprocess import ADMIN_KEY, API_KEY, InProcess, RawAnswer, demo_routers, raw_request

SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
PATH_VALUES = {
    "backendId": "matrix-backend",
    "model": "matrix-model",
    "orgId": "org-matrix",
    "keyId": "key_0000000000000000",
    "requestId": "0d5e7c1a-2b3f-4a6d-8e9f-0a1b2c3d4e5f",
}
# Bodies for operations whose request body has no example in the contract.
SAMPLES: dict[str, Any] = {
    "createApiKey": {"organization_id": "org-matrix", "scopes": ["inference"]},
    "putBackend": {"base_url": "http://127.0.0.1:9/v1", "models": ["matrix-model"]},
    "putModelPolicy": {"backends": [{"backend_id": "matrix-backend", "weight": 1}]},
    "putOrgLimits": {},
    "patchOrgLimits": {"failure_mode": "fail_open"},
    "resetOrgLimits": {"reason": "matrix"},
    "revokeApiKey": {"reason": "matrix"},
    "setBackendState": {"state": "healthy", "reason": "matrix"},
}
INVALID_BODY = b'{"matrix_unexpected": [1, 2, 3]}'
UNMATCHED = frozenset({400, 404, 405})  # a target or method that matches no operation (README)


def _path_variants(path: str) -> Iterator[tuple[str, bytes]]:
    first, _, rest = path[1:].partition("/")
    yield "exact", path.encode()
    yield "trailing-slash", (path + "/").encode()
    yield "leading-double-slash", ("/" + path).encode()
    yield "inner-double-slash", f"/{first}//{rest}".encode()
    yield "percent-encoded-letter", (path[:-1] + f"%{ord(path[-1]):02X}").encode()
    yield "percent-encoded-slash", f"/{first}%2F{rest}".encode()
    yield "upper-case", path.upper().encode()
    yield "dot-segment", f"/{first}/./{rest}".encode()
    yield "dot-dot-segment", f"/{first}/x/../{rest}".encode()
    yield "semicolon", (path + ";x=1").encode()
    yield "nul", (path + "%00").encode()
    yield "absolute-form", ("http://evil.example" + path).encode()


MEDIA_TYPES = (
    "APPLICATION/JSON",
    "Application/Json; charset=utf-8",
    "application/json;charset=UTF-8",
    "application/json ; charset=utf-8",
    "application/merge-patch+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/*",
    None,
)


@dataclass(frozen=True)
class Case:
    operation: Operation
    name: str
    method: str
    target: bytes
    body: bytes = b""
    media_type: str | None = "application/json"
    invalid_body: bool = False
    routed: bool = False  # the target and method are the operation's own: its documented statuses apply
    extra: dict[str, str] = field(default_factory=dict)


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _documented(op: Operation, *, any_method: bool = False) -> frozenset[int]:
    """The operation's documented statuses below 500; ``any_method``: of every operation on its path."""
    methods = [m for m in SPEC["paths"][op.path] if m != "parameters"] if any_method else [op.method.lower()]
    codes = [code for method in methods for code in SPEC["paths"][op.path][method]["responses"]]
    return frozenset(int(code) for code in codes if code.isdigit() and int(code) < 500)


def _sample_body(op: Operation) -> bytes:
    media = _deref(SPEC["paths"][op.path][op.method.lower()]["requestBody"])["content"]["application/json"]
    example = media.get("example", _deref(media["schema"]).get("example", SAMPLES.get(op.operation_id)))
    assert example is not None, f"{op.operation_id}: no example in the contract and no sample here"
    getattr(contract_models, op.body_model or "").model_validate(example)  # the sample must stay valid
    return orjson.dumps(example)


def _path(op: Operation) -> str:
    def fill(match: str) -> str:
        name = match.strip("{}")
        assert name in PATH_VALUES, f"{op.operation_id}: no value for path parameter {name}"
        return urllib.parse.quote(PATH_VALUES[name], safe="")

    parts = [fill(part) if part.startswith("{") else part for part in op.path.split("/")]
    return "/".join(parts)


def _cases() -> list[Case]:
    cases: list[Case] = []
    for op in OPERATIONS.values():
        path = _path(op)
        body = _sample_body(op) if op.has_body else b""
        for name, target in _path_variants(path):
            cases.append(Case(op, name, op.method, target, body, routed=name == "exact"))
        cases.append(Case(op, "head", "HEAD", path.encode()))
        cases.append(Case(op, "undocumented-method", "PATCH", path.encode(), body))
        if op.has_body:
            for media_type in MEDIA_TYPES:
                cases.append(
                    Case(op, f"media {media_type}", op.method, path.encode(), body, media_type, routed=True)
                )
                cases.append(
                    Case(
                        op,
                        f"invalid {media_type}",
                        op.method,
                        path.encode(),
                        INVALID_BODY,
                        media_type,
                        True,
                        True,
                    )
                )
    return cases


CASES = _cases()


def _credential(op: Operation) -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY if op.scope == "admin" else API_KEY}


def _code(answer: RawAnswer) -> str | None:
    if answer.status < 400 or not answer.body:
        return None
    try:
        document = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    code = error.get("code") if isinstance(error, dict) else document.get("code") if error else None
    return code if isinstance(code, str) else None


def _problems(case: Case, answer: RawAnswer) -> list[str]:
    problems = []
    if answer.status >= 500:
        problems.append(f"server error {answer.status}")
    if 300 <= answer.status < 400 or "location" in answer.headers:
        problems.append(f"redirect {answer.status} to {answer.headers.get('location')}")
    allowed = (
        _documented(case.operation)
        if case.routed
        else _documented(case.operation, any_method=True) | UNMATCHED
    )
    if answer.status not in allowed:
        problems.append(f"undocumented status {answer.status}")
    if answer.status >= 400 and case.method != "HEAD":
        if not answer.headers.get("content-type", "").startswith("application/json"):
            problems.append("error is not JSON")
        elif not isinstance(_code(answer), str):
            problems.append("error without a code")
    if case.invalid_body and answer.status < 400:
        problems.append("a body the model refuses reached the handler")
    if answer.status == 405 and "allow" not in answer.headers:
        problems.append("405 without Allow")
    return problems


@pytest.fixture(scope="module")
async def routers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[InProcess, InProcess]]:
    async with demo_routers(tmp_path_factory.mktemp("matrix"), True, False) as (fast, plain):
        yield fast, plain


async def test_every_operation_variant_gets_a_documented_identical_answer(routers):
    fast, plain = routers
    failures: list[str] = []
    for case in CASES:
        headers = {"Host": "evil.example", **_credential(case.operation), **case.extra}
        if case.media_type is not None and case.body:
            headers["Content-Type"] = case.media_type
        answers = []
        for router in (fast, plain):
            answer = await raw_request(router.app, case.method, case.target, headers, case.body)
            answers.append(answer)
            failures += [
                f"{case.operation.operation_id} {case.name} {case.method} {case.target!r}: {p}"
                for p in _problems(case, answer)
            ]
        a, b = answers
        if (a.status, _code(a)) != (b.status, _code(b)):
            failures.append(
                f"{case.operation.operation_id} {case.name}: fast lane {a.status} {_code(a)} "
                f"!= Connexion {b.status} {_code(b)}"
            )
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)


def test_the_matrix_covers_every_operation():
    covered = {case.operation.operation_id for case in CASES}
    assert covered == set(OPERATIONS)
    assert len(CASES) > 10 * len(OPERATIONS)


NOT_JSON = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")
STATE_VIEWS = ("/v1/admin/keys", "/v1/admin/models", "/v1/admin/orgs/org-matrix/limits", "/v1/admin/backends")


async def _state(router: InProcess) -> list[Any]:
    """What the admin API shows: keys, model policies, an organisation's limits, backend ids."""
    views = []
    for path in STATE_VIEWS:
        answer = await raw_request(router.app, "GET", path.encode(), {"X-API-Key": ADMIN_KEY})
        document = orjson.loads(answer.body)
        if path.endswith("/backends"):  # live figures move with health probes; the set of ids must not
            document = sorted(item["id"] for item in document["items"])
        views.append((answer.status, document))
    return views


async def test_no_write_operation_changes_state_for_a_refused_body(routers):
    """Every write operation, with a body its model refuses under every media type and with a valid
    body under media types that are not JSON: refused, and nothing the admin API shows changed."""
    writes = [op for op in OPERATIONS.values() if op.has_body]
    for router in routers:
        before = await _state(router)
        for op in writes:
            target = _path(op).encode()
            attempts = [(INVALID_BODY, media) for media in MEDIA_TYPES] + [
                (_sample_body(op), m) for m in NOT_JSON
            ]
            for body, media_type in attempts:
                headers = {**_credential(op), **({"Content-Type": media_type} if media_type else {})}
                answer = await raw_request(router.app, op.method, target, headers, body)
                assert answer.status in (400, 415), (op.operation_id, media_type, answer.status, answer.body)
        assert await _state(router) == before
