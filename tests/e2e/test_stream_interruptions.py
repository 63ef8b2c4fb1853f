"""Streams cut short: by the client (the router hangs up on the backend too) or by the backend.

Either way what was streamed is billed, and the caller learns that the answer is incomplete.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import openai
import pytest

from tests.e2e.conftest import FAULTY_MODEL, KEYS, MODEL, auth, records_for
from tests.harness.wait import wait_until

CHAT = "/v1/chat/completions"
WORDS = 60
CHUNKS = 30
INTERVAL_MS = 100
TEXT = " ".join(f"word{i}" for i in range(WORDS))


def read_two_chunks_then_hang_up(clients, router, kind: str, headers: dict[str, str]) -> list[str]:
    """Starts a stream, takes two content chunks, closes the connection; returns what arrived."""
    messages = [{"role": "user", "content": TEXT}]
    received: list[str] = []
    if kind == "openai":
        stream = clients.openai(router, KEYS["user"].secret).chat.completions.create(
            model=MODEL, messages=messages, stream=True, extra_headers=headers
        )
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            if len(received) == 2:
                break
        stream.close()
        return received
    body = {"model": MODEL, "messages": messages, "stream": True}
    with clients.http(router).stream("POST", CHAT, json=body, headers={**auth(KEYS["user"]), **headers}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                received.append(line)
                if len(received) == 2:
                    break
    return received


@pytest.mark.parametrize("kind", ["openai", "httpx"])
def test_a_client_hanging_up_mid_stream_closes_the_backend_call_and_partial_usage_is_billed(
    clients, router, mock, kind
):
    mock.configure(stream_chunks=CHUNKS, chunk_interval_ms=INTERVAL_MS)
    request_id = f"e2e-hangup-{uuid.uuid4()}"

    received = read_two_chunks_then_hang_up(clients, router, kind, {"X-Request-ID": request_id})
    hung_up_at = time.monotonic()

    assert len(received) == 2
    endings = wait_until(lambda: list(mock.stream_endings), timeout=2.0)
    assert endings, "the backend never saw its stream end"
    outcome, written, ended_at = endings[0]
    assert outcome != "finished", "the router read the whole stream although its client had gone"
    assert written < CHUNKS
    assert ended_at - hung_up_at < 1.0, f"the backend connection closed {ended_at - hung_up_at:.2f} s late"

    records = wait_until(lambda: records_for(router, request_id), timeout=2.0)
    assert len(records) == 1, "the partial stream was not accounted for"
    record = records[0]
    assert record["stream"] is True
    assert 0 < record["tokens_output"] < WORDS
    assert record["tokens_input"] > 0
    assert record["cost_micro_usd"] > 0


def test_a_stream_cut_short_does_not_hold_its_idempotency_key(clients, router, mock):
    """The client went away, so the retry with the same key runs again and streams in full."""
    mock.configure(stream_chunks=CHUNKS, chunk_interval_ms=INTERVAL_MS)
    key = str(uuid.uuid4())
    read_two_chunks_then_hang_up(clients, router, "openai", {"Idempotency-Key": key})
    assert wait_until(lambda: mock.stream_endings, timeout=2.0)
    mock.configure(stream_chunks=4, chunk_interval_ms=0)

    retry = clients.openai(router, KEYS["user"].secret).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": TEXT}],
        stream=True,
        extra_headers={"Idempotency-Key": key},
    )
    text = "".join(c.choices[0].delta.content or "" for c in retry if c.choices)

    assert text == TEXT
    assert mock.inference_requests == 2


# ---------------------------------------------------------------- the backend breaks the stream

BREAKS = {
    # name: (backend, controls)
    "backend-dies": ("mock", {"stream_chunks": 6, "stream_then_die": 2}),
    "backend-stalls-past-its-timeout": ("faulty", {"stream_chunks": 6, "chunk_interval_ms": 1500}),
}


def start_broken_stream(clients, router, request, case: str, request_id: str):
    which, controls = BREAKS[case]
    backend = request.getfixturevalue(which)
    backend.configure(**controls)
    model = MODEL if which == "mock" else FAULTY_MODEL
    client = clients.openai(router, KEYS["user"].secret)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": TEXT}],
        stream=True,
        extra_headers={"X-Request-ID": request_id},
    )
    return backend, stream


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_stream_the_backend_breaks_is_billed_for_what_was_relayed(clients, router, request, case):
    request_id = f"e2e-broken-{uuid.uuid4()}"
    _, stream = start_broken_stream(clients, router, request, case, request_id)

    with contextlib.suppress(openai.APIError):  # raised once the router reports the break in-stream
        for _ in stream:
            pass

    records = wait_until(lambda: records_for(router, request_id), timeout=3.0)
    assert len(records) == 1
    assert records[0]["stream"] is True
    assert records[0]["status_code"] >= 500
    assert records[0]["tokens_output"] > 0


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_stream_the_backend_breaks_ends_with_an_error_the_openai_client_raises(
    clients, router, request, case
):
    _, stream = start_broken_stream(clients, router, request, case, f"e2e-broken-{uuid.uuid4()}")
    received: list[str] = []

    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    assert received, "the chunks before the break were not relayed"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body.get("code") in {"BACKEND_ERROR", "BACKEND_UNAVAILABLE", "BACKEND_TIMEOUT"}
