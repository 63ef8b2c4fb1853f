"""Streamed backend calls against the real mock backend: events relayed, breaks, cancellation, reuse."""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest

from router_impl.routing.backend_client import BackendCallError, BackendClient, StreamBroken
from router_impl.routing.sse import StreamUsageTracker, TokenUsage, parse_event
from tests.harness.stall import StallMeter
from tests.harness.wait import eventually
from tests.routing import tcp_table
from tests.routing.conftest import TRACEPARENT, backend_for, chat_body

STREAM_WITH_USAGE = {"stream": True, "stream_options": {"include_usage": True}}


def open_stream(client: BackendClient, backend, body: bytes, deadline: float | None = None):
    return client.stream(
        backend, "/chat/completions", body, traceparent=TRACEPARENT, request_id="req-s", deadline=deadline
    )


async def collect(client: BackendClient, backend, body: bytes, deadline: float | None = None) -> list[bytes]:
    async with open_stream(client, backend, body, deadline) as events:
        return [block async for block in events]


async def test_a_stream_is_relayed_event_by_event_with_usage_last(client, mock_backend):
    mock_backend.configure(stream_chunks=4)
    body = chat_body("one two three four five six", **STREAM_WITH_USAGE)
    blocks = await collect(client, backend_for(mock_backend), body)
    # 4 content chunks, the finish chunk, the usage chunk, [DONE]
    assert len(blocks) == 7
    assert all(block.startswith(b"data: ") and block.endswith(b"\n\n") for block in blocks)
    assert blocks[-1] == b"data: [DONE]\n\n"
    tracker = StreamUsageTracker()
    for block in blocks:
        tracker.feed(block)
    assert tracker.text == "one two three four five six"
    assert tracker.usage() == TokenUsage(6, 6, 12)
    assert tracker.finish_reason == "stop"
    assert tracker.done
    headers = {k.lower(): v for k, v in mock_backend.last_request.headers.items()}
    assert headers["traceparent"] == TRACEPARENT
    assert headers["x-request-id"] == "req-s"
    assert headers["accept"] == "text/event-stream"


async def test_a_stream_without_usage_has_no_usage_chunk(client, mock_backend):
    mock_backend.configure(stream_chunks=3, omit_usage=True)
    blocks = await collect(client, backend_for(mock_backend), chat_body(**STREAM_WITH_USAGE))
    assert len(blocks) == 5
    assert all(orjson.loads(parse_event(b).data).get("usage") is None for b in blocks[:-1])


async def test_events_arrive_as_the_backend_sends_them_not_at_the_end(client, mock_backend):
    mock_backend.configure(stream_chunks=3, chunk_interval_ms=150)
    started = time.monotonic()
    # The backend is a thread of this process: the bound grows by what the machine took from it.
    with StallMeter([os.getpid()], interval_s=0.01) as meter:
        async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)) as events:
            first = await anext(events)
            assert time.monotonic() - started < 0.12 + meter.between(started, time.monotonic())
            assert b'"role":"assistant"' in first
            rest = [block async for block in events]
    assert len(rest) == 4


async def test_a_stream_that_dies_midway_raises_stream_broken_after_the_events_sent(client, mock_backend):
    mock_backend.configure(stream_chunks=6, stream_then_die=3)
    relayed: list[bytes] = []
    with pytest.raises(StreamBroken) as broken:
        async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)) as events:
            async for block in events:
                relayed.append(block)
    assert len(relayed) == 3
    assert broken.value.events_relayed == 3
    assert "127.0.0.1" not in str(broken.value)
    assert mock_backend.inference_requests == 1


async def test_a_stream_that_dies_before_its_first_event_is_a_backend_error_code(client, mock_backend):
    mock_backend.configure(stream_then_die=0)
    with pytest.raises(BackendCallError) as caught:
        await collect(client, backend_for(mock_backend), chat_body(stream=True))
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert caught.value.maybe_processed


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        ({"fixed_status": 500}, "BACKEND_ERROR"),
        ({"fixed_status": 429}, "BACKEND_UNAVAILABLE"),
        ({"fixed_status": 400}, "INVALID_REQUEST"),
        ({"reset": True}, "BACKEND_UNAVAILABLE"),
        ({"garbage": True}, "BACKEND_ERROR"),  # a JSON content type where events were expected
    ],
)
async def test_errors_before_the_stream_starts_map_like_plain_calls(client, mock_backend, faults, code):
    mock_backend.configure(**faults)
    with pytest.raises(BackendCallError) as caught:
        async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)):
            pytest.fail("the stream must not open")
    assert caught.value.code == code
    assert client.in_flight("mock-a") == 0


async def test_a_stream_reset_before_its_status_line_is_a_reset_the_dispatcher_may_retry(
    client, mock_backend
):
    mock_backend.configure(reset=True)
    with pytest.raises(BackendCallError) as caught:
        async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)):
            pytest.fail("the stream must not open")
    assert (caught.value.code, caught.value.reason, caught.value.maybe_processed) == (
        "BACKEND_UNAVAILABLE",
        "reset",
        True,
    )


async def test_a_hanging_stream_times_out_at_the_deadline(client, mock_backend):
    mock_backend.configure(hang=True)
    started = time.monotonic()
    with StallMeter([os.getpid()], interval_s=0.01) as meter, pytest.raises(BackendCallError) as caught:
        await collect(client, backend_for(mock_backend), chat_body(stream=True), deadline=started + 0.3)
    assert 0.3 <= time.monotonic() - started < 0.4 + meter.total_s  # late only by the machine's stall
    assert caught.value.code == "BACKEND_TIMEOUT"


async def test_a_stream_idle_longer_than_timeout_ms_breaks(client, mock_backend):
    mock_backend.configure(stream_chunks=3, chunk_interval_ms=600)
    relayed: list[bytes] = []
    with pytest.raises(StreamBroken):
        async with open_stream(
            client, backend_for(mock_backend, timeout_ms=200), chat_body(stream=True)
        ) as ev:
            async for block in ev:
                relayed.append(block)
    assert len(relayed) == 1


async def test_a_long_stream_is_not_cut_by_the_deadline_once_it_has_started(client, mock_backend):
    mock_backend.configure(stream_chunks=4, chunk_interval_ms=100)
    blocks = await collect(
        client, backend_for(mock_backend), chat_body(stream=True), deadline=time.monotonic() + 0.2
    )
    assert len(blocks) == 6


async def test_cancelling_the_reader_closes_the_backend_connection(client, mock_backend):
    mock_backend.configure(stream_chunks=20, chunk_interval_ms=200)
    first_seen = asyncio.Event()

    async def relay() -> None:
        async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)) as events:
            async for _ in events:
                first_seen.set()

    task = asyncio.create_task(relay())
    await asyncio.wait_for(first_seen.wait(), 2)
    assert tcp_table.server_side_open(mock_backend.port) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The backend sees the connection end at once (it stops generating), not after 20 chunks.
    await eventually(lambda: tcp_table.server_side_open(mock_backend.port) == 0, timeout=2.0)  # not 4 s
    assert client.in_flight("mock-a") == 0


async def test_leaving_the_stream_early_closes_the_backend_connection(client, mock_backend):
    mock_backend.configure(stream_chunks=20, chunk_interval_ms=200)
    async with open_stream(client, backend_for(mock_backend), chat_body(stream=True)) as events:
        await anext(events)
    await eventually(lambda: tcp_table.server_side_open(mock_backend.port) == 0, timeout=2.0)  # not 4 s


async def test_exiting_twice_counts_the_call_once(client, mock_backend):
    opened = open_stream(client, backend_for(mock_backend), chat_body(stream=True))
    events = await opened.__aenter__()
    assert client.in_flight("mock-a") == 1
    await anext(events)
    await opened.__aexit__(None, None, None)
    await opened.__aexit__(None, None, None)
    assert client.in_flight("mock-a") == 0


async def test_a_finished_stream_gives_its_connection_back_for_reuse(client, mock_backend):
    backend = backend_for(mock_backend)
    seen: set[int] = set()
    for _ in range(5):
        await collect(client, backend, chat_body(stream=True))
        seen |= tcp_table.client_ports(mock_backend.port)
    await client.post_json(
        backend, "/chat/completions", chat_body(), traceparent=TRACEPARENT, request_id="r", deadline=None
    )
    seen |= tcp_table.client_ports(mock_backend.port)
    assert len(seen) == 1
