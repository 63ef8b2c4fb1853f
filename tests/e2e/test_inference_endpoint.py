"""US-1 on the contract's envelope, POST /v1/inference: schema, usage, cost, routing headers, retries."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

from router_impl.ids import uuid_for
from tests.e2e.conftest import (
    BACKEND_ID,
    KEYS,
    MODEL,
    ORG,
    PRICE_IN,
    PRICE_OUT,
    auth,
    records_for,
)
from tests.harness.backend_responses import count_tokens
from tests.harness.errors import error_code
from tests.harness.wait import wait_until

INFERENCE = "/v1/inference"
PAYLOAD = "count these seven words for the bill"


def envelope(payload: str = PAYLOAD, **extra: Any) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": payload, **extra}


def expected_cost_usd(tokens_in: int, tokens_out: int) -> Decimal:
    return (PRICE_IN * tokens_in + PRICE_OUT * tokens_out) / Decimal(1_000_000)


def test_an_inference_returns_the_completion_with_usage_cost_and_routing_headers(http, router, mock):
    mock.configure(latency_ms=30)
    body = envelope()

    response = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))

    assert response.status_code == 200, response.text  # and it conforms: see the `clients` fixture
    answer = response.json()
    assert answer["request_id"] == body["request_id"]
    assert answer["output"]["text"] == PAYLOAD
    assert answer["output"]["finish_reason"] == "stop"
    usage = answer["usage"]
    words = count_tokens(PAYLOAD)  # the mock's tokenizer; an echo costs the same both ways
    assert (usage["tokens_input"], usage["tokens_output"]) == (words, words)
    assert Decimal(str(usage["cost_usd"])) == expected_cost_usd(words, words)
    assert usage["limit_state"] == "WITHIN_LIMIT"
    assert usage["latency_ms"] >= 30
    assert re.fullmatch(r"[0-9a-f]{32}", answer["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", answer["span_id"])
    assert response.headers["X-Routing-Backend"] == BACKEND_ID
    assert response.headers["X-Routing-Decision"] == "PRIMARY"
    assert response.headers["X-Request-ID"]
    assert mock.inference_requests == 1
    sent = mock.last_inference_request
    assert sent is not None and sent.body["messages"] == [{"role": "user", "content": PAYLOAD}]


def test_inference_parameters_reach_the_backend_and_the_bill_follows_its_usage(http, router, mock):
    body = envelope(parameters={"max_tokens": 3, "temperature": 0.2})

    answer = http.post(INFERENCE, json=body, headers=auth(KEYS["user"])).json()

    assert answer["output"] == {"text": "count these seven", "finish_reason": "length"}
    words = count_tokens(PAYLOAD)
    assert (answer["usage"]["tokens_input"], answer["usage"]["tokens_output"]) == (words, 3)
    assert Decimal(str(answer["usage"]["cost_usd"])) == expected_cost_usd(words, 3)
    sent = mock.last_inference_request
    assert sent is not None
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (3, 0.2)


def test_the_usage_record_matches_the_response(http, router, mock):
    body = envelope()

    answer = http.post(INFERENCE, json=body, headers=auth(KEYS["user"])).json()

    records = wait_until(lambda: records_for(router, body["request_id"]))
    assert len(records) == 1
    record = records[0]
    words = count_tokens(PAYLOAD)
    assert record["organization_id"] == ORG
    # A config-declared key id that is not a UUID: its UUIDv5 in the record, itself in metadata.
    assert record["api_key_id"] == uuid_for(KEYS["user"].id) != KEYS["user"].id
    assert record["metadata"]["api_key_ref"] == KEYS["user"].id
    assert (record["model"], record["backend_id"]) == (MODEL, BACKEND_ID)
    assert (record["tokens_input"], record["tokens_output"]) == (words, words)
    assert record["cost_micro_usd"] == int(expected_cost_usd(words, words) * 1_000_000)
    assert Decimal(str(record["cost_usd"])) == expected_cost_usd(words, words)
    assert record["decision_reason"] == "PRIMARY"
    assert record["limit_state"] == "WITHIN_LIMIT"
    assert record["stream"] is False
    assert record["trace_id"] == answer["trace_id"]


def test_the_callers_trace_and_request_ids_are_carried_through(http, router, mock):
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id = f"e2e-correlation-{uuid.uuid4()}"

    response = http.post(
        INFERENCE,
        json=envelope(),
        headers={
            **auth(KEYS["user"]),
            "traceparent": f"00-{trace_id}-{parent}-01",
            "X-Request-ID": request_id,
        },
    )

    assert response.headers["X-Request-ID"] == request_id
    assert response.json()["trace_id"] == trace_id
    sent = mock.last_inference_request
    assert sent is not None
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["traceparent"].split("-")[1] == trace_id


def test_a_retry_with_the_same_request_id_replays_the_answer_and_is_billed_once(http, router, mock):
    body = envelope(payload=f"bill me once {uuid.uuid4()}")

    first = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))
    retry = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))

    assert first.status_code == retry.status_code == 200
    assert retry.content == first.content
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["X-Routing-Backend"] == BACKEND_ID
    assert retry.headers["X-Routing-Decision"] == "PRIMARY"
    assert mock.inference_requests == 1
    assert len(wait_until(lambda: records_for(router, body["request_id"]))) == 1


def test_the_same_request_id_with_another_body_is_a_conflict(http, router, mock):
    body = envelope()
    assert http.post(INFERENCE, json=body, headers=auth(KEYS["user"])).status_code == 200

    reused = http.post(INFERENCE, json={**body, "payload": "a different prompt"}, headers=auth(KEYS["user"]))

    assert (reused.status_code, error_code(reused)) == (409, "IDEMPOTENCY_CONFLICT")
    assert mock.inference_requests == 1
    assert len(records_for(router, body["request_id"])) == 1


def test_an_unknown_model_is_a_404_naming_the_available_models(http, router, mock):
    response = http.post(INFERENCE, json={**envelope(), "model": "no-such-model"}, headers=auth(KEYS["user"]))

    assert (response.status_code, error_code(response)) == (404, "MODEL_NOT_FOUND")
    assert MODEL in response.json()["error"]
    assert mock.inference_requests == 0


def test_a_request_that_breaks_the_contract_is_a_400_before_any_backend_call(http, router, mock):
    body = {**envelope(), "parameters": {"max_tokens": 0}}

    response = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")
    assert mock.inference_requests == 0


def test_a_request_id_that_is_not_a_uuid_is_a_400_before_any_backend_call(http, router, mock):
    """request_id is `format: uuid`; anything else must not be forwarded, billed or echoed back."""
    body = {"request_id": "not-a-uuid", "model": MODEL, "payload": "x"}

    response = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR"), response.text
    assert mock.inference_requests == 0
    assert records_for(router, "not-a-uuid") == []
