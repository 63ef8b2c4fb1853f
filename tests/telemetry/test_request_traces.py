"""One request, one trace: the spans of a chat, inference, failover, streamed and refused request
through an in-process router (both lanes), and the access log's fields."""

from __future__ import annotations

import re
import uuid

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from tests.telemetry.tracing_support import (
    AUTH,
    CHAT,
    KEY,
    KEY_ID,
    MODEL,
    ORG,
    STAGES,
    assert_no_secret_or_prompt,
    caller_traceparent,
    hex_span,
    one,
    published_span,
    recording,
    request_spans,
    sent_traceparent,
    serving,
)

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
    assert_no_secret_or_prompt(spans)


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
        publish = await published_span(exporter)
        assert (ingress.context.trace_id, ingress.context.span_id) in {
            (link.context.trace_id, link.context.span_id) for link in publish.links
        }
        assert publish.kind is SpanKind.PRODUCER and publish.parent is None
        assert components.tracing is tracing


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
