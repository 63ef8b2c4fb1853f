"""Hostile input against a real router: each gets a clean 4xx in the contract's shape (or OpenAI's on
the OpenAI routes), never a 500, and none reaches the backend."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import KEYS, MODEL, ObservedBackend, auth
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"


@pytest.fixture(scope="module")
def router(start_router: Callable[..., RouterProcess]) -> RouterProcess:
    return start_router()


def deep(levels: int) -> bytes:
    return b'{"model":"' + MODEL.encode() + b'","messages":' + b"[" * levels + b"]" * levels + b"}"


CASES: list[tuple[str, str, dict[str, str], bytes, set[int]]] = [
    ("deep nesting, 10k levels", CHAT, {}, deep(10_000), {400, 413}),
    ("deep nesting, 200 levels", CHAT, {}, deep(200), {400}),
    (
        "deep nesting on /v1/inference",
        INFERENCE,
        {},
        b'{"request_id":' + b"[" * 5000 + b"]" * 5000 + b"}",
        {400},
    ),
    ("invalid UTF-8", CHAT, {}, b'{"model":"\xff\xfe","messages":[]}', {400}),
    (
        "a lone surrogate escape",
        CHAT,
        {},
        b'{"model":"\\ud800","messages":[{"role":"user","content":"x"}]}',
        {400},
    ),
    ("NaN literal", CHAT, {}, b'{"model":"m","messages":[],"temperature":NaN}', {400}),
    ("huge number", CHAT, {}, b'{"model":"m","messages":[],"temperature":1' + b"0" * 5000 + b"}", {400}),
    ("duplicate-heavy keys", CHAT, {}, b"{" + b",".join(b'"model":"m"' for _ in range(5000)) + b"}", {400}),
    ("not an object", CHAT, {}, b'["model"]', {400}),
    ("text/plain body", CHAT, {"Content-Type": "text/plain"}, b'{"model":"m","messages":[]}', {415}),
    ("no content type", CHAT, {"Content-Type": ""}, b'{"model":"m","messages":[]}', {400, 415}),
    ("multipart", CHAT, {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--", {415}),
    ("empty body", CHAT, {}, b"", {400}),
    (
        "a body over the OpenAI routes' 10 MiB cap",
        CHAT,
        {},
        b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (10 << 20) + b'"}]}',
        {413},
    ),
    (
        "a 70 KB envelope (64 KiB cap)",
        INFERENCE,
        {},
        b'{"request_id":"6f1b3f52-94c4-4a0e-9a7d-2b8e61c4d0a3","model":"m","payload":"'
        + b"a" * 70_000
        + b'"}',
        {413},
    ),
]


@pytest.mark.parametrize(("what", "path", "extra", "body", "statuses"), CASES, ids=[c[0] for c in CASES])
def test_hostile_bodies_get_a_clean_4xx_and_never_reach_the_backend(
    router: RouterProcess,
    mock: ObservedBackend,
    what: str,
    path: str,
    extra: dict[str, str],
    body: bytes,
    statuses: set[int],
) -> None:
    headers = {**auth(KEYS["user"]), "Content-Type": "application/json", **extra}
    if extra.get("Content-Type") == "":
        del headers["Content-Type"]
    answer = httpx.post(router.base_url + path, content=body, headers=headers, trust_env=False, timeout=10)
    assert answer.status_code in statuses, (what, answer.status_code, answer.text[:300])
    document = answer.json()
    if path == CHAT:
        assert set(document) == {"error"} and document["error"]["code"], document
    else:
        assert document["code"] and document["trace_id"], document
    assert mock.inference_requests == 0


@pytest.mark.parametrize(
    ("what", "headers", "statuses"),
    [
        ("an 8 KB header value", {"X-Custom": "a" * 8192}, {200, 400, 431}),
        ("a 64 KB header value", {"X-Custom": "a" * 65536}, {400, 431}),
        ("a 20 KB bearer token", {"Authorization": "Bearer " + "a" * 20_000}, {400, 401, 431}),
        ("a key with control characters", {"X-API-Key": "rk_\x01\x02"}, {400, 401}),
        ("a malformed traceparent", {"traceparent": "00-zz-zz-zz"}, {200}),
        ("a 1 KB request id", {"X-Request-ID": "r" * 1024}, {200}),
    ],
)
def test_hostile_headers_are_refused_cleanly_or_ignored(
    router: RouterProcess, mock: ObservedBackend, what: str, headers: dict[str, str], statuses: set[int]
) -> None:
    base = (
        {**auth(KEYS["user"]), **headers}
        if "Authorization" not in headers and "X-API-Key" not in headers
        else headers
    )
    body = chat_body(MODEL, "header check")
    try:
        answer = httpx.post(router.base_url + CHAT, json=body, headers=base, trust_env=False, timeout=10)
    except httpx.RemoteProtocolError:
        return  # the server closed the connection on an oversized header: refused, nothing served
    assert answer.status_code in statuses, (what, answer.status_code, answer.text[:300])
    assert answer.status_code < 500
    if answer.status_code == 200:
        assert len(answer.headers["X-Request-ID"]) <= 128  # an unusable id is replaced, not echoed
    else:
        assert mock.inference_requests == 0
