"""Credential tricks x every protected operation, on the fast lane and on the Connexion path.

The contract matrix (test_contract_matrix.py) varies the request target, method and media type
with a good key; this one varies the credential: empty, blank, padded, NUL or non-ASCII bytes,
Bearer in odd case and spacing, other schemes, the key in both headers (same or differing),
repeated headers, keys of another organisation, revoked, expired and signing keys, and signature
headers on a key without a signing secret. Every protected operation of the contract meets every
trick on both apps (the same router in process, built with and without the fast lane), which
must give the same status and code. A trick marked refused must end in that 401 code, in the
ErrorResponse shape, before anything happens: what the admin API shows is unchanged and no
backend was called. A trick marked accepted must be served as a plain key would be.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest
import yaml
from router_contract.operations import OPERATIONS, Operation

from router_impl.auth.secret_box import SecretBox
from router_impl.demo.answers import DEMO_MODEL
from router_impl.telemetry.metrics import Metrics
from tests.harness.config_docs import key_record
from tests.security.inprocess import (
    ADMIN_KEY,
    API_KEY,
    SECRET_KEY,
    InProcess,
    RawAnswer,
    demo_routers,
    raw_request,
)
from tests.security.test_contract_matrix import _code, _documented, _path, _sample_body, _state

OTHER_ORG = "rk-matrix-other-org-key"  # every scope, organisation org-other
REVOKED = "rk-matrix-revoked-key"
EXPIRED = "rk-matrix-expired-key"
SIGNING = "rk-matrix-signing-key"  # signature_required
INVALID = "INVALID_API_KEY"  # a key that is no key
MALFORMED = "AUTH_INVALID"  # no key, another scheme, or two different keys
ALL_SCOPES = ["inference", "audit", "admin"]
PROTECTED = sorted((op for op in OPERATIONS.values() if op.scope is not None), key=lambda op: op.operation_id)

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Trick:
    name: str
    headers: Callable[[str], Headers]  # from the operation's good key
    refused: str | None  # the 401 code it must end in; None: served as the good key is


def _x(value: str) -> Headers:
    return [("X-API-Key", value)]


def _auth(value: str) -> Headers:
    return [("Authorization", value)]


def _signature_headers(key: str) -> Headers:
    return [*_x(key), ("X-Signature", "v1=" + "0" * 64), ("X-Signature-Timestamp", str(int(time.time())))]


TRICKS = (
    Trick("no credential", lambda k: [], MALFORMED),
    Trick("empty X-API-Key", lambda k: _x(""), INVALID),
    Trick("blank X-API-Key", lambda k: _x(" \t "), INVALID),
    Trick("key padded with spaces and tabs", lambda k: _x(f" \t{k} "), None),
    Trick("key with a trailing NUL", lambda k: _x(k + "\x00"), INVALID),
    Trick("key with a trailing latin-1 letter", lambda k: _x(k + "\xe9"), INVALID),
    Trick("key with trailing UTF-8 bytes", lambda k: _x(k + "é".encode().decode("latin-1")), INVALID),
    Trick("key in upper case", lambda k: _x(k.upper()), INVALID),
    Trick("key with 300 more characters", lambda k: _x(k + "x" * 300), INVALID),
    Trick("two keys in one X-API-Key", lambda k: _x(f"{k}, {k}"), INVALID),
    Trick("Bearer", lambda k: _auth(f"Bearer {k}"), None),
    Trick("bearer in lower case", lambda k: _auth(f"bearer {k}"), None),
    Trick("BeArEr in odd case", lambda k: _auth(f"BeArEr {k}"), None),
    Trick("Bearer with two spaces", lambda k: _auth(f"Bearer  {k}"), None),
    Trick("Bearer with a tab", lambda k: _auth(f"Bearer\t{k}"), None),
    Trick("Bearer with a trailing space", lambda k: _auth(f"Bearer {k} "), None),
    Trick("Bearer without a token", lambda k: _auth("Bearer"), MALFORMED),
    Trick("Bearer with a blank token", lambda k: _auth("Bearer  "), MALFORMED),
    Trick("Authorization without a scheme", lambda k: _auth(k), MALFORMED),
    Trick(
        "Basic with the key",
        lambda k: _auth("Basic " + base64.b64encode(f"{k}:".encode()).decode()),
        MALFORMED,
    ),
    Trick("Token scheme", lambda k: _auth(f"Token {k}"), MALFORMED),
    Trick("the key in both headers", lambda k: [*_x(k), *_auth(f"Bearer {k}")], None),
    Trick("X-API-Key good, Bearer unknown", lambda k: [*_x(k), *_auth("Bearer rk-unknown")], MALFORMED),
    Trick("X-API-Key unknown, Bearer good", lambda k: [*_x("rk-unknown"), *_auth(f"Bearer {k}")], MALFORMED),
    Trick(
        "X-API-Key good, Bearer another org's", lambda k: [*_x(k), *_auth(f"Bearer {OTHER_ORG}")], MALFORMED
    ),
    Trick("X-API-Key twice, the same", lambda k: _x(k) + _x(k), None),
    Trick("X-API-Key twice, good then unknown", lambda k: _x(k) + _x("rk-unknown"), MALFORMED),
    Trick("X-API-Key twice, unknown then good", lambda k: _x("rk-unknown") + _x(k), MALFORMED),
    Trick("X-API-Key twice, good then another org's", lambda k: _x(k) + _x(OTHER_ORG), MALFORMED),
    Trick(
        "Authorization twice, good then unknown",
        lambda k: _auth(f"Bearer {k}") + _auth("Bearer x"),
        MALFORMED,
    ),
    Trick("another organisation's key", lambda k: _x(OTHER_ORG), None),
    Trick("a revoked key", lambda k: _x(REVOKED), INVALID),
    Trick("a revoked key as Bearer", lambda k: _auth(f"Bearer {REVOKED}"), INVALID),
    Trick("an expired key", lambda k: _x(EXPIRED), INVALID),
    Trick("a signing key without a signature", lambda k: _x(SIGNING), "SIGNATURE_MISSING"),
    Trick("signature headers on a key without a signing secret", _signature_headers, "SIGNATURE_INVALID"),
    Trick(
        "a timestamp header alone", lambda k: [*_x(k), ("X-Signature-Timestamp", "0")], "SIGNATURE_INVALID"
    ),
)


def _config() -> str:
    """The matrix's extra keys, beside demo mode's own: every scope, so only the trick decides."""
    box = SecretBox(SECRET_KEY.encode())

    def record(key_id: str, secret: str, org: str = "org-matrix", **extra: object) -> dict[str, object]:
        return key_record(key_id, org, secret, ALL_SCOPES, **extra)

    keys = [
        record("key_matrix_other", OTHER_ORG, "org-other"),
        record("key_matrix_revoked", REVOKED, revoked=True, revoked_at="2026-01-01T00:00:00Z"),
        record("key_matrix_expired", EXPIRED, expires_at="2026-01-01T00:00:00Z"),
        record(
            "key_matrix_signing",
            SIGNING,
            signature_required=True,
            signing_secret_enc=box.encrypt("rs_matrix-signing-secret", context="key_matrix_signing"),
        ),
    ]
    return yaml.safe_dump({"api_keys": keys})


@pytest.fixture(scope="module")
async def routers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[InProcess, InProcess]]:
    async with demo_routers(tmp_path_factory.mktemp("credentials"), True, False, config=_config()) as (
        fast,
        plain,
    ):
        yield fast, plain


def _body(op: Operation) -> bytes:
    """The contract's example, with the demo model for inference, so a served request calls upstream."""
    if not op.has_body:
        return b""
    document = orjson.loads(_sample_body(op))
    if op.scope == "inference" and "model" in document:
        document["model"] = DEMO_MODEL
    return orjson.dumps(document)


def _upstream_calls(metrics: Metrics) -> float:
    return sum(
        s.value for m in metrics.backend_requests.collect() for s in m.samples if s.name.endswith("_total")
    )


async def _send(router: InProcess, op: Operation, trick: Trick) -> RawAnswer:
    good = ADMIN_KEY if op.scope == "admin" else API_KEY
    headers = trick.headers(good) + ([("Content-Type", "application/json")] if op.has_body else [])
    return await raw_request(router.app, op.method, _path(op).encode(), headers, _body(op))


def _problems(op: Operation, trick: Trick, answer: RawAnswer) -> list[str]:
    code = _code(answer)
    if trick.refused is not None:
        if (answer.status, code) != (401, trick.refused):
            return [f"{answer.status} {code}, expected 401 {trick.refused}"]
        if not answer.headers.get("content-type", "").startswith("application/json"):
            return ["refusal is not JSON"]
        return []
    if answer.status in (401, 403) or answer.status >= 500 or answer.status not in _documented(op):
        return [f"served as {answer.status} {code}, expected what the good key gets"]
    return []


async def _run(routers: tuple[InProcess, InProcess], refused: bool) -> list[str]:
    failures: list[str] = []
    for op in PROTECTED:
        for trick in (t for t in TRICKS if (t.refused is not None) == refused):
            answers = [await _send(router, op, trick) for router in routers]
            for lane, answer in zip(("fast lane", "Connexion"), answers, strict=True):
                failures += [
                    f"{op.operation_id} / {trick.name} / {lane}: {p}" for p in _problems(op, trick, answer)
                ]
            (a, b) = answers
            if (a.status, _code(a)) != (b.status, _code(b)):
                failures.append(
                    f"{op.operation_id} / {trick.name}: fast lane {a.status} {_code(a)} "
                    f"!= Connexion {b.status} {_code(b)}"
                )
    return failures


async def test_every_credential_trick_gets_the_same_answer_on_both_paths_and_refusals_change_nothing(routers):
    before = [(await _state(r), _upstream_calls(r.components.metrics)) for r in routers]
    failures = await _run(routers, refused=True)
    after = [(await _state(r), _upstream_calls(r.components.metrics)) for r in routers]
    for lane, was, now in zip(("fast lane", "Connexion"), before, after, strict=True):
        if was != now:
            failures.append(f"{lane}: refused credentials changed state or called a backend")
    failures += await _run(routers, refused=False)
    served = sum(r.components.metrics.backend_requests.collect()[0].samples != [] for r in routers)
    assert served == 2, "no accepted trick reached a backend: the matrix would not see a missed refusal"
    total = len(PROTECTED) * len(TRICKS)
    assert not failures, f"{len(failures)} problems in {total} cases:\n" + "\n".join(failures)


def test_the_credential_matrix_covers_every_protected_operation():
    assert {op.scope for op in PROTECTED} == {"admin", "audit", "inference"}
    assert len(PROTECTED) == sum(op.scope is not None for op in OPERATIONS.values())
