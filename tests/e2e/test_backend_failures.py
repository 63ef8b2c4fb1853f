"""US-1: when the backend fails, the caller gets a deterministic gateway error that leaks no internals.

``faulty-model`` is served by ``mock-f`` (timeout_ms 500). Each fault is tried on /v1/inference,
on /v1/chat/completions and on a streamed chat completion (which fails before its first event,
so it too is answered with a JSON error).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import (
    FAULTY_BACKEND_ID,
    FAULTY_MODEL,
    FAULTY_TIMEOUT_MS,
    KEYS,
    auth,
    records_for,
)
from tests.harness.bodies import chat_body
from tests.harness.errors import error_code

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
VARIANTS = ["inference", "chat", "chat-stream"]


def request_for(variant: str, text: str = "will this work") -> tuple[str, dict[str, Any]]:
    if variant == "inference":
        return INFERENCE, {"request_id": str(uuid.uuid4()), "model": FAULTY_MODEL, "payload": text}
    body: dict[str, Any] = chat_body(FAULTY_MODEL, text)
    if variant == "chat-stream":
        body["stream"] = True
    return CHAT, body


def call(http, variant: str) -> tuple[Any, str, float]:
    path, body = request_for(variant)
    request_id = f"e2e-fail-{uuid.uuid4()}"
    started = time.monotonic()
    response = http.post(path, json=body, headers={**auth(KEYS["user"]), "X-Request-ID": request_id})
    return response, request_id, time.monotonic() - started


def assert_no_backend_internals(response, backend) -> None:
    leaked = [
        needle
        for needle in (backend.base_url, f"127.0.0.1:{backend.port}", f":{backend.port}", "mock backend")
        if needle in response.text or any(needle in value for value in response.headers.values())
    ]
    assert not leaked, f"the error leaks {leaked}: {response.text}"


def assert_gateway_error(router, faulty, response, request_id: str, status: int, code: str) -> None:
    assert (response.status_code, error_code(response)) == (status, code), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_no_backend_internals(response, faulty)
    assert records_for(router, request_id) == [], "a failed request was billed"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_backend_answering_500_is_a_502_backend_error(http, router, faulty, variant):
    faulty.configure(error_rate=1.0)

    response, request_id, _ = call(http, variant)

    assert_gateway_error(router, faulty, response, request_id, 502, "BACKEND_ERROR")
    assert faulty.inference_requests == 1  # tried once: a 5xx may have been processed, no blind retry


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_backend_answering_garbage_is_a_502_backend_error(http, router, faulty, variant):
    faulty.configure(garbage=True)

    response, request_id, _ = call(http, variant)

    assert_gateway_error(router, faulty, response, request_id, 502, "BACKEND_ERROR")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_hanging_backend_is_a_504_backend_timeout_soon_after_its_timeout(http, router, faulty, variant):
    faulty.configure(hang=True)

    response, request_id, elapsed = call(http, variant)

    assert_gateway_error(router, faulty, response, request_id, 504, "BACKEND_TIMEOUT")
    timeout_s = FAULTY_TIMEOUT_MS / 1000
    assert timeout_s * 0.9 <= elapsed <= timeout_s + 1.0, f"answered after {elapsed:.2f} s"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_stopped_backend_is_a_503_backend_unavailable(http, router, faulty, variant):
    faulty.stop()

    response, request_id, elapsed = call(http, variant)

    assert_gateway_error(router, faulty, response, request_id, 503, "BACKEND_UNAVAILABLE")
    assert elapsed < 1.0, f"a refused connection took {elapsed:.2f} s to report"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_backend_that_drops_the_connection_is_a_gateway_error(http, router, faulty, variant):
    faulty.configure(reset=True)

    response, request_id, _ = call(http, variant)

    assert response.status_code in (502, 503), response.text
    assert error_code(response) in ("BACKEND_ERROR", "BACKEND_UNAVAILABLE")
    assert_gateway_error(router, faulty, response, request_id, response.status_code, error_code(response))


def test_a_backend_error_is_not_stored_so_the_retry_with_the_same_request_id_runs_again(http, router, faulty):
    _, body = request_for("inference", "retry me after the outage")
    faulty.configure(error_rate=1.0)
    failed = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))
    assert (failed.status_code, error_code(failed)) == (502, "BACKEND_ERROR")

    faulty.reset_controls()
    retried = http.post(INFERENCE, json=body, headers=auth(KEYS["user"]))

    assert retried.status_code == 200, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.headers["X-Routing-Backend"] == FAULTY_BACKEND_ID
    assert retried.json()["output"]["text"] == "retry me after the outage"
    assert faulty.inference_requests == 2
    assert len(records_for(router, body["request_id"])) == 1
