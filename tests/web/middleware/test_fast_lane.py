"""The fast lane answers exactly as Connexion would: same status, headers and body bytes.

Two apps are built from the same settings, one with the lane and one without. Each has its own
demo upstream on a fixed clock and deterministic trace/span ids, so every response is
reproducible; the same cases go to both, in the same order, and must match byte for byte.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from router_impl.app import build_app, build_components
from router_impl.demo.upstream import start_demo_upstream
from router_impl.settings import Settings
from router_impl.web.middleware.fast_lane import FastLaneMiddleware
from tests.harness.bodies import chat_body

KEY = "rk-demo-key"
ADMIN = "rk-demo-admin-key"
CHAT = chat_body("demo", "hello fast lane", max_tokens=8)


@dataclass
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    fast: bool = False  # the lane is expected to answer it


def _json(document: Any) -> bytes:
    return orjson.dumps(document)


def _auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **extra}


CASES = [
    Case("chat", "/v1/chat/completions", _json(CHAT), _auth(), fast=True),
    Case(
        "chat-x-api-key",
        "/v1/chat/completions",
        _json(CHAT),
        {"X-API-Key": KEY, "Content-Type": "application/json"},
        fast=True,
    ),
    Case(
        "completion", "/v1/completions", _json({"model": "demo", "prompt": "once upon"}), _auth(), fast=True
    ),
    Case(
        "inference",
        "/v1/inference",
        _json({"request_id": "0b8f1c52-3a0e-4e8e-9a55-4c1f7d0e2a11", "model": "demo", "payload": "one two"}),
        _auth(),
        fast=True,
    ),
    Case(
        "inference-replayed",
        "/v1/inference",
        _json({"request_id": "0b8f1c52-3a0e-4e8e-9a55-4c1f7d0e2a11", "model": "demo", "payload": "one two"}),
        _auth(),
        fast=True,
    ),
    Case(
        "inference-conflict",
        "/v1/inference",
        _json({"request_id": "0b8f1c52-3a0e-4e8e-9a55-4c1f7d0e2a11", "model": "demo", "payload": "changed"}),
        _auth(),
        fast=True,
    ),
    Case(
        "chat-idempotency-key",
        "/v1/chat/completions",
        _json(CHAT),
        _auth(**{"Idempotency-Key": "k-1"}),
        fast=True,
    ),
    Case(
        "chat-idempotency-replay",
        "/v1/chat/completions",
        _json(CHAT),
        _auth(**{"Idempotency-Key": "k-1"}),
        fast=True,
    ),
    Case("stream", "/v1/chat/completions", _json({**CHAT, "stream": True}), _auth(), fast=True),
    Case(
        "stream-with-usage",
        "/v1/chat/completions",
        _json({**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
        _auth(),
        fast=True,
    ),
    Case("unknown-model", "/v1/chat/completions", _json({**CHAT, "model": "nope"}), _auth(), fast=True),
    Case(
        "big-integer",
        "/v1/chat/completions",
        b'{"model":"demo","messages":[{"role":"user","content":"n"}],"seed":1,"x":123456789012345678901234567890}',
        _auth(),
        fast=True,
    ),
    Case(
        "bad-key",
        "/v1/chat/completions",
        _json(CHAT),
        {"Authorization": "Bearer nope", "Content-Type": "application/json"},
    ),
    Case("no-key", "/v1/chat/completions", _json(CHAT), {"Content-Type": "application/json"}),
    Case(
        "admin-key-lacks-scope",
        "/v1/chat/completions",
        _json(CHAT),
        {"X-API-Key": ADMIN, "Content-Type": "application/json"},
    ),
    Case("invalid-body", "/v1/chat/completions", _json({"model": "demo", "messages": "no"}), _auth()),
    Case("null-optional-field", "/v1/chat/completions", _json({**CHAT, "user": None}), _auth()),
    Case(
        "charset",
        "/v1/chat/completions",
        _json(CHAT),
        _auth(**{"Content-Type": "application/json; charset=utf-8"}),
    ),
    Case("text-plain", "/v1/chat/completions", b"hello", _auth(**{"Content-Type": "text/plain"})),
    Case(
        "bad-idempotency-key", "/v1/chat/completions", _json(CHAT), _auth(**{"Idempotency-Key": "has space"})
    ),
    Case(
        "signature-headers",
        "/v1/chat/completions",
        _json(CHAT),
        _auth(**{"X-Signature": "0" * 64, "X-Signature-Timestamp": "1"}),
    ),
    Case(
        "inference-bad-uuid",
        "/v1/inference",
        _json({"request_id": "x", "model": "demo", "payload": "p"}),
        _auth(),
    ),
    Case(
        "inference-hmac-field",
        "/v1/inference",
        _json(
            {
                "request_id": "1b8f1c52-3a0e-4e8e-9a55-4c1f7d0e2a11",
                "model": "demo",
                "payload": "p",
                "hmac_signature": "0" * 64,
            }
        ),
        _auth(),
    ),
    Case("empty-body", "/v1/chat/completions", b"", _auth()),
]


def _ids() -> Callable[[int], str]:
    counter = itertools.count(1)
    return lambda n: f"{next(counter):0{2 * n}x}"


@dataclass
class Router:
    upstream: Any
    components: Any
    app: Any


async def _build(tmp_path, name: str, fast_lane: bool) -> Router:
    upstream = await start_demo_upstream(clock=lambda: 1_700_000_000.0)
    settings = Settings(
        data_dir=tmp_path / name,
        demo=True,
        demo_upstream=upstream.base_url,
        fast_lane=fast_lane,
        access_log=False,
        secret_key="0123456789abcdef0123456789abcdef-fast-lane-test",
    )
    components = build_components(settings)
    # Measured latency is part of /v1/inference bodies: freeze the pipeline's clock so both apps
    # report the same. An hour ahead, request deadlines stay far off (backend timeouts still bound calls).
    frozen = time.monotonic() + 3600
    components.pipeline.monotonic = lambda: frozen
    return Router(upstream, components, build_app(components, random_hex=_ids()))


def _lane(app: Any) -> FastLaneMiddleware | None:
    while app is not None and not isinstance(app, FastLaneMiddleware):
        app = getattr(app, "app", None)
    return app


def _http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router")


@pytest.fixture
async def both(tmp_path):
    # Both apps are built before either starts: building one is seconds of synchronous work on the
    # shared event loop, long enough for the other's first health probe of its upstream to time out
    # on a busy machine (the backend then answers 503).
    routers = [await _build(tmp_path, "fast", True), await _build(tmp_path, "plain", False)]
    for router in routers:
        await router.components.lifecycle.start()
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=routers[0].app), base_url="http://router"
            ) as a,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=routers[1].app), base_url="http://router"
            ) as b,
        ):
            yield (a, routers[0].app), (b, routers[1].app)
    finally:
        for router in routers:
            await router.components.lifecycle.stop()
            await router.upstream.stop()


async def test_fast_lane_responses_are_byte_identical_to_connexion(both):
    (fast, fast_app), (plain, plain_app) = both
    lane = _lane(fast_app)
    assert lane is not None and _lane(plain_app) is None
    for case in CASES:
        headers = {"X-Request-ID": f"case-{case.name}", **case.headers}
        before = lane.served
        a = await fast.post(case.path, content=case.body, headers=headers)
        b = await plain.post(case.path, content=case.body, headers=headers)
        assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content), (
            case.name
        )
        assert (lane.served - before == 1) == case.fast, f"{case.name}: lane served={lane.served - before}"


async def test_fast_lane_serves_the_happy_path(both):
    (fast, fast_app), _ = both
    lane = _lane(fast_app)
    response = await fast.post("/v1/chat/completions", content=_json(CHAT), headers=_auth())
    assert response.status_code == 200 and lane.served == 1


def test_fast_lane_refuses_to_start_on_unsupported_contract_features():
    from router_contract.operations import OPERATIONS

    from router_impl.web.middleware.fast_lane import FastLaneUnsupported, build_routes

    altered = dict(OPERATIONS)
    op = altered["createChatCompletion"]
    altered["createChatCompletion"] = type(op)(
        **{**op.__dict__, "header_params": (*op.header_params, "x-new")}
    )
    with pytest.raises(FastLaneUnsupported):
        build_routes(altered, lambda _: None)  # type: ignore[arg-type,return-value]


async def test_unknown_properties_never_cause_a_500_on_either_lane(both):
    """Unknown top-level properties are ignored on every route, whatever they hold: an integer beyond
    64 bits, astral characters (surrogate pairs) and control characters in names, denormal floats.
    Next to ``hmac_timestamp`` the inference body is re-encoded for its idempotency fingerprint,
    which orjson cannot do for such an integer (it answered 500). A retry gets the stored reply."""
    odd = {
        "\u0096\U000a6d43": [[[]], [], []],
        "\u00f0\u00c4R{": {"": -1.1125369292536007e-308, "big": [106531779456416227567222128640]},
        "\u0001": True,
    }
    inference = {
        **odd,
        "request_id": "fe341e04-fa8b-2335-8fea-052c6d546313",
        "model": "demo",
        "payload": "x",
        "hmac_timestamp": 775,
    }
    bodies = [
        ("/v1/inference", inference),
        ("/v1/chat/completions", {**odd, **CHAT}),
        # Messages carry unknown properties too; the budget's prompt bound encodes them.
        ("/v1/chat/completions", {**CHAT, "messages": [{**CHAT["messages"][0], "x": 2**90}]}),
        ("/v1/embeddings", {**odd, "model": "demo", "input": "hi"}),
    ]
    for client, _ in both:
        for path, document in bodies:
            # The standard library's encoder: orjson cannot write the big integer either.
            raw = json.dumps(document).encode()
            first = await client.post(path, content=raw, headers=_auth())
            assert first.status_code == 200, (path, first.text)
        retry = await client.post("/v1/inference", content=json.dumps(inference).encode(), headers=_auth())
        assert retry.status_code == 200 and retry.json()["request_id"] == inference["request_id"]
