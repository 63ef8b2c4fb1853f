"""Tracing: one request is one trace (ingress > authenticate, route, limits, backend.attempt,
usage.write) continuing the caller's traceparent, the backend is told the attempt's span, the
publisher's round links back to the request; unsampled and disabled requests still carry their
trace id. The access log line names the caller, the backend and the outcome, never a key."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from router_impl.app import build_app, build_components
from router_impl.auth.keys import hash_secret
from router_impl.components import Components
from router_impl.settings import Settings
from router_impl.telemetry.tracing import Tracing
from router_impl.web.request_state import new_state
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.wait import eventually

MODEL = "trace-model"
ORG = "org-trace"
KEY_ID = "key-trace"
KEY = "rk_trace_secret_key_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = chat_body(MODEL, "a prompt nobody may trace")
STAGES = {"authenticate", "route", "limits", "backend.attempt", "usage.write"}


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[MockBackend, MockBackend]]:
    with MockBackend(models=(MODEL,)) as primary, MockBackend(models=(MODEL,)) as standby:
        yield primary, standby


@pytest.fixture
def pair(backends: tuple[MockBackend, MockBackend]) -> Iterator[tuple[MockBackend, MockBackend]]:
    for backend in backends:
        backend.reset_controls()
        backend.reset_counters()
    yield backends
    for backend in backends:
        backend.reset_controls()


def _config(tmp_path: Path, primary: MockBackend, standby: MockBackend) -> Path:
    config: dict[str, Any] = {
        "backends": [
            {"id": "primary", "base_url": primary.openai_base_url, "models": [MODEL]},
            {"id": "standby", "base_url": standby.openai_base_url, "models": [MODEL]},
        ],
        "models": [
            {
                "model": MODEL,
                "backends": [
                    {"backend_id": "primary", "weight": 100},
                    {"backend_id": "standby", "weight": 0},
                ],
                "failover_threshold": 100,
            }
        ],
        "api_keys": [
            {"id": KEY_ID, "organization_id": ORG, "key_hash": hash_secret(KEY), "scopes": ["inference"]}
        ],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@asynccontextmanager
async def serving(
    tmp_path: Path, pair: tuple[MockBackend, MockBackend], tracing: Tracing, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Components]]:
    data_dir = tmp_path / f"router-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir()
    config = _config(data_dir, *pair)
    options: dict[str, Any] = {"access_log": False, **settings}
    components = build_components(Settings(config_path=config, data_dir=data_dir, **options), tracing=tracing)
    app = build_app(components)
    await components.lifecycle.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://router"
        ) as client:
            yield client, components
    finally:
        await components.lifecycle.stop()


def recording(ratio: float = 1.0) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(enabled=True, sample_ratio=ratio, processor=SimpleSpanProcessor(exporter)), exporter


def caller_traceparent(flags: str = "01") -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent, f"00-{trace_id}-{parent}-{flags}"


def request_spans(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def hex_span(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def sent_traceparent(backend: MockBackend) -> str:
    sent = backend.last_inference_request
    assert sent is not None
    return {k.lower(): v for k, v in sent.headers.items()}["traceparent"]


# ---------------------------------------------------------------- one request, one trace


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "connexion"])
async def test_a_chat_request_is_one_trace_continuing_the_callers(tmp_path, pair, fast_lane):
    primary, _ = pair
    tracing, exporter = recording()
    trace_id, parent, traceparent = caller_traceparent()
    async with serving(tmp_path, pair, tracing, fast_lane=fast_lane) as (client, _):
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={**AUTH, "traceparent": traceparent}
        )
    assert response.status_code == 200, response.text

    spans = request_spans(exporter, trace_id)
    assert {s.name for s in spans} == {"ingress", *STAGES}
    ingress = one(spans, "ingress")
    assert ingress.kind is SpanKind.SERVER
    assert ingress.parent is not None and ingress.parent.is_remote
    assert format(ingress.parent.span_id, "016x") == parent
    for span in spans:
        if span is not ingress:
            assert span.parent is not None and span.parent.span_id == ingress.context.span_id, span.name
    attempt = one(spans, "backend.attempt")
    assert attempt.kind is SpanKind.CLIENT
    assert dict(attempt.attributes or {}) == {
        "router.backend.id": "primary",
        "router.attempt.outcome": "ok",
        "http.response.status_code": 200,
    }
    assert sent_traceparent(primary) == f"00-{trace_id}-{hex_span(attempt)}-01"
    attributes = dict(ingress.attributes or {})
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert (attributes["router.organization_id"], attributes["router.api_key_id"]) == (ORG, KEY_ID)
    assert (attributes["router.backend.id"], attributes["router.routing.decision"]) == ("primary", "PRIMARY")
    authenticate = dict(one(spans, "authenticate").attributes or {})
    assert authenticate == {"router.organization_id": ORG, "router.api_key_id": KEY_ID}
    assert one(spans, "route").attributes == {"router.model": MODEL, "router.candidates": 2}
    assert {s.resource.attributes["service.name"] for s in spans} == {"api-router"}
    _assert_no_secret_or_prompt(spans)


async def test_the_response_usage_record_and_trace_name_the_same_ids(tmp_path, pair):
    tracing, exporter = recording()
    trace_id, _, traceparent = caller_traceparent()
    body = {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "hello envelope"}
    async with serving(tmp_path, pair, tracing) as (client, components):
        response = await client.post("/v1/inference", json=body, headers={**AUTH, "traceparent": traceparent})
        assert response.status_code == 200, response.text
        answer = response.json()
        ingress = one(request_spans(exporter, trace_id), "ingress")
        assert (answer["trace_id"], answer["span_id"]) == (trace_id, hex_span(ingress))
        # The publisher's round is a trace of its own, linked to the request behind each record.
        publish = await _published(exporter)
        assert (ingress.context.trace_id, ingress.context.span_id) in {
            (link.context.trace_id, link.context.span_id) for link in publish.links
        }
        assert publish.kind is SpanKind.PRODUCER and publish.parent is None
        assert components.tracing is tracing


async def _published(exporter: InMemorySpanExporter) -> ReadableSpan:
    def linked() -> ReadableSpan | None:
        spans = exporter.get_finished_spans()
        return next((s for s in spans if s.name == "usage.publish" and s.links), None)

    return await eventually(linked, what="a usage.publish span linked to a request")


async def test_a_failover_is_two_attempts_and_the_backend_sees_the_second(tmp_path, pair):
    primary, standby = pair
    primary.configure(fixed_status=503)
    tracing, exporter = recording()
    trace_id, _, traceparent = caller_traceparent()
    async with serving(tmp_path, pair, tracing) as (client, _):
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={**AUTH, "traceparent": traceparent}
        )
    assert response.status_code == 200, response.text
    assert response.headers["X-Routing-Decision"] == "FAILOVER"

    attempts = sorted(
        (s for s in request_spans(exporter, trace_id) if s.name == "backend.attempt"),
        key=lambda s: s.start_time or 0,
    )
    assert [dict(s.attributes or {}) for s in attempts] == [
        {
            "router.backend.id": "primary",
            "router.attempt.outcome": "error",
            "http.response.status_code": 503,
            "error.type": "BACKEND_ERROR",
        },
        {"router.backend.id": "standby", "router.attempt.outcome": "ok", "http.response.status_code": 200},
    ]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert sent_traceparent(primary) == f"00-{trace_id}-{hex_span(attempts[0])}-01"
    assert sent_traceparent(standby) == f"00-{trace_id}-{hex_span(attempts[1])}-01"


async def test_a_streamed_answer_is_traced_too(tmp_path, pair):
    tracing, exporter = recording()
    trace_id, _, traceparent = caller_traceparent()
    async with serving(tmp_path, pair, tracing) as (client, _):
        response = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={**AUTH, "traceparent": traceparent},
        )
    assert response.status_code == 200 and b"[DONE]" in response.content
    assert {s.name for s in request_spans(exporter, trace_id)} == {"ingress", *STAGES}


async def test_a_refused_request_is_traced_with_its_error_code(tmp_path, pair):
    tracing, exporter = recording()
    trace_id, _, traceparent = caller_traceparent()
    async with serving(tmp_path, pair, tracing) as (client, _):
        response = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "nope"},
            headers={**AUTH, "traceparent": traceparent},
        )
    assert response.status_code == 404
    spans = request_spans(exporter, trace_id)
    route = one(spans, "route")
    assert route.status.status_code is StatusCode.ERROR and route.status.description == "MODEL_NOT_FOUND"
    assert one(spans, "ingress").attributes["router.error_code"] == "MODEL_NOT_FOUND"  # type: ignore[index]
    assert not [s for s in spans if s.name == "backend.attempt"]


# ---------------------------------------------------------------- sampling and disabled tracing


async def test_unsampled_requests_export_nothing_but_still_carry_their_trace_id(tmp_path, pair):
    primary, _ = pair
    tracing, exporter = recording(ratio=0.0)
    async with serving(tmp_path, pair, tracing) as (client, _):
        fresh = await client.post("/v1/inference", json=_envelope(), headers=AUTH)
        fresh_sent = sent_traceparent(primary)
        trace_id, _, traceparent = caller_traceparent(flags="00")
        declined = await client.post(
            "/v1/inference", json=_envelope(), headers={**AUTH, "traceparent": traceparent}
        )
        declined_sent = sent_traceparent(primary)
        # The caller's decision wins over the ratio: a sampled caller is traced.
        sampled_id, _, sampled = caller_traceparent(flags="01")
        await client.post("/v1/inference", json=_envelope(), headers={**AUTH, "traceparent": sampled})
    assert fresh.status_code == declined.status_code == 200
    answer = fresh.json()
    assert re.fullmatch(r"[0-9a-f]{32}", answer["trace_id"])
    # Not sampled (bit 0 clear); a trace the router started may set W3C level 2's random bit (0x02).
    assert fresh_sent.rsplit("-", 1)[0] == f"00-{answer['trace_id']}-{answer['span_id']}"
    assert int(fresh_sent.rsplit("-", 1)[1], 16) & 0x01 == 0
    assert declined.json()["trace_id"] == trace_id
    assert declined_sent == f"00-{trace_id}-{declined.json()['span_id']}-00"
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {int(sampled_id, 16)}


async def test_disabled_tracing_builds_no_provider_and_keeps_the_ids(tmp_path, pair):
    primary, _ = pair
    exporter = InMemorySpanExporter()
    tracing = Tracing(enabled=False, processor=SimpleSpanProcessor(exporter))
    assert tracing.provider is None
    trace_id, parent, traceparent = caller_traceparent()
    async with serving(tmp_path, pair, tracing) as (client, _):
        response = await client.post(
            "/v1/inference", json=_envelope(), headers={**AUTH, "traceparent": traceparent}
        )
    answer = response.json()
    assert answer["trace_id"] == trace_id and answer["span_id"] != parent
    assert sent_traceparent(primary) == f"00-{trace_id}-{answer['span_id']}-01"
    assert exporter.get_finished_spans() == ()


def test_tracing_is_on_with_the_router_switch_or_a_standard_otlp_endpoint(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ROUTER_TRACING_ENABLED", raising=False)
    assert not Tracing.from_settings(Settings()).enabled
    monkeypatch.setenv("ROUTER_TRACING_ENABLED", "true")
    assert Tracing.from_settings(Settings()).enabled
    monkeypatch.delenv("ROUTER_TRACING_ENABLED")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    settings = Settings()
    tracing = Tracing.from_settings(settings)
    assert tracing.enabled and settings.tracing_sample_ratio == 0.1
    assert tracing.provider is not None
    assert tracing.provider.resource.attributes["service.version"] == settings.build_version
    asyncio.run(tracing.shutdown())


def test_spans_reach_an_otlp_http_collector_as_protobuf(monkeypatch):
    """The real exporter, configured by the standard variable only, against a tiny OTLP receiver."""
    received: list[tuple[str, str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("ROUTER_TRACING_SAMPLE_RATIO", "1")
        tracing = Tracing.from_settings(Settings())
        with tracing.root_span("usage.publish", {"router.publish.entries": 3}):
            pass
        asyncio.run(tracing.shutdown())
    finally:
        server.shutdown()
    assert [(path, kind) for path, kind, _ in received] == [("/v1/traces", "application/x-protobuf")]
    request = ExportTraceServiceRequest.FromString(received[0][2])
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "api-router"
    assert [span.name for scope in resource_spans.scope_spans for span in scope.spans] == ["usage.publish"]


async def test_shutdown_does_not_wait_for_a_collector_that_hangs():
    release = threading.Event()

    class Hanging(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.SUCCESS

    tracing = Tracing(enabled=True, sample_ratio=1.0, exporter=Hanging())
    with tracing.root_span("usage.publish"):
        pass
    started = time.monotonic()
    try:
        await tracing.shutdown(within_seconds=0.2)
        assert time.monotonic() - started < 2
    finally:
        release.set()


def test_the_disabled_path_costs_almost_nothing():
    """What a request pays for tracing when it is off: the ingress check, five stage spans and the
    traceparent out. Measured far below the 5 µs budget (≈1 µs here); the bound is loose for CI."""
    tracing = Tracing()
    state = new_state([], openai=False)

    def request() -> str:
        if tracing.enabled:
            raise AssertionError
        for name in ("authenticate", "route", "limits", "backend.attempt", "usage.write"):
            with tracing.span(name) as span:
                span.set_attribute("router.x", 1)
        return tracing.traceparent(state.trace_id, state.span_id)

    rounds = 20_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            request()
        best = min(best, (time.perf_counter() - started) / rounds)
    assert best < 5e-6, f"{best * 1e6:.2f} µs per request"


# ---------------------------------------------------------------- access log


async def test_the_access_log_names_caller_backend_decision_and_error_but_no_key(tmp_path, pair):
    tracing, _ = recording()
    async with serving(tmp_path, pair, tracing, access_log=True) as (client, _):
        with capture_logs() as logs:
            ok = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            missing = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=AUTH)
            bad_key = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer rk_not_a_key"}
            )
    assert (ok.status_code, missing.status_code, bad_key.status_code) == (200, 404, 401)
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 3
    served, refused, unknown = lines
    assert {k: served[k] for k in ("organization_id", "api_key_id", "backend", "decision", "error_code")} == {
        "organization_id": ORG,
        "api_key_id": KEY_ID,
        "backend": "primary",
        "decision": "PRIMARY",
        "error_code": None,
    }
    assert re.fullmatch(r"[0-9a-f]{16}", served["span_id"]) and served["status"] == 200
    assert (refused["organization_id"], refused["backend"]) == (ORG, None)
    assert refused["error_code"] == "MODEL_NOT_FOUND"
    assert (unknown["organization_id"], unknown["error_code"]) == (None, "INVALID_API_KEY")
    text = repr(logs)
    assert KEY not in text and "rk_not_a_key" not in text and "a prompt nobody may trace" not in text


# ---------------------------------------------------------------- helpers


def _envelope() -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "hello envelope"}


def _assert_no_secret_or_prompt(spans: list[ReadableSpan]) -> None:
    text = repr([(s.name, dict(s.attributes or {}), s.status.description) for s in spans])
    assert KEY not in text and "a prompt nobody may trace" not in text and "Bearer" not in text
