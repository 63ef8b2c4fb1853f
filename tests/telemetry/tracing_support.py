"""An in-process router traced into memory, for the tracing tests: its config (a primary and a standby
backend), ``serving`` (the app on an httpx ASGI client), span lookups and the check that no secret or
prompt reached a span. The backends (``pair``) are fixtures of tests/conftest.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_impl.components import Components
from router_impl.settings import Settings
from router_impl.telemetry.tracing import Tracing
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, failover_model, key_record, write_config
from tests.harness.inprocess import in_process
from tests.harness.wait import eventually

MODEL = "trace-model"
ORG = "org-trace"
KEY_ID = "key-trace"
KEY = "rk_trace_secret_key_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = chat_body(MODEL, "a prompt nobody may trace")
STAGES = {"authenticate", "route", "limits", "backend.attempt", "usage.write"}


def router_config(tmp_path: Path, primary: MockBackend, standby: MockBackend) -> Path:
    config: dict[str, Any] = {
        "backends": [
            backend_doc("primary", primary.openai_base_url, MODEL),
            backend_doc("standby", standby.openai_base_url, MODEL),
        ],
        "models": [failover_model(MODEL, "primary", "standby", failover_threshold=100)],
        "api_keys": [key_record(KEY_ID, ORG, KEY)],
    }
    return write_config(tmp_path, config)


@asynccontextmanager
async def serving(
    tmp_path: Path, pair: tuple[MockBackend, MockBackend], tracing: Tracing, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Components]]:
    data_dir = tmp_path / f"router-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir()
    config = router_config(data_dir, *pair)
    options: dict[str, Any] = {"access_log": False, **settings}
    settings = Settings(config_path=config, data_dir=data_dir, **options)
    async with in_process(settings, tracing=tracing) as router:
        yield router.client, router.components


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


async def published_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    def linked() -> ReadableSpan | None:
        spans = exporter.get_finished_spans()
        return next((s for s in spans if s.name == "usage.publish" and s.links), None)

    return await eventually(linked, what="a usage.publish span linked to a request")


def envelope() -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "hello envelope"}


def assert_no_secret_or_prompt(spans: list[ReadableSpan]) -> None:
    text = repr([(s.name, dict(s.attributes or {}), s.status.description) for s in spans])
    assert KEY not in text and "a prompt nobody may trace" not in text and "Bearer" not in text
