"""The pipeline's streamed path in process (fake backend port): the relay one event behind, its
typed failure, a client that leaves before or during the stream, and replays of finished streams."""

from __future__ import annotations

import asyncio

import pytest

from router_impl.config.model import BudgetLimits, OrgLimits
from router_impl.errors import ApiError
from router_impl.pipeline import FinalReply, StreamFailure, StreamingReply
from router_impl.routing.backend_errors import BackendCallError, error_for_status
from tests.harness.fake_backends import DONE, Fails, Streams, chat_stream
from tests.harness.pipeline_rig import MODEL, Rig, rig

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def open_stream(r: Rig, key: str | None = None, **extra: object) -> StreamingReply:
    reply = await r.pipeline.stream(r.call({**BODY, **extra}, key=key))
    assert isinstance(reply, StreamingReply)
    return reply


async def drain(reply: StreamingReply) -> list[bytes | StreamFailure]:
    return [item async for item in reply.events]


async def test_events_pass_through_and_the_last_waits_for_the_usage_record() -> None:
    r = rig()
    events = chat_stream("a", "b", prompt_tokens=4)
    r.backends.script("a", Streams(events))
    reply = await open_stream(r)
    assert reply.headers == {"X-Routing-Backend": "a", "X-Routing-Decision": "PRIMARY"}
    seen: list[bytes | StreamFailure] = []
    async for item in reply.events:
        seen.append(item)
        if item == DONE:
            assert len(r.usage.records) == 1  # the client sees the end only once it is billed
    assert seen == [events[0], events[1], DONE]  # the usage-only chunk was not asked for
    [record] = r.usage.records
    assert (record.stream, record.tokens_input, record.tokens_output, record.status_code) == (True, 4, 2, 200)
    assert r.backends.bodies()[0]["stream_options"] == {"include_usage": True}
    assert r.backends.opened[0].closed


async def test_the_usage_chunk_is_passed_on_when_the_client_asked_for_it() -> None:
    r = rig()
    events = chat_stream("a")
    r.backends.script("a", Streams(events))
    reply = await open_stream(r, stream_options={"include_usage": True})
    assert await drain(reply) == list(events)


@pytest.mark.parametrize(("broken", "done"), [("ServerDisconnectedError", True), (None, False)])
async def test_a_stream_that_breaks_or_stops_early_ends_with_a_typed_failure(
    broken: str | None, done: bool
) -> None:
    r = rig()
    r.backends.script("a", Streams(chat_stream("a", "b", done=done)[:2], broken=broken))
    reply = await open_stream(r, key="s1")
    items = await drain(reply)
    failure = items[-1]
    assert isinstance(failure, StreamFailure) and failure.error.code == "BACKEND_ERROR"
    assert all(isinstance(item, bytes) for item in items[:-1]) and len(items) == 3
    [record] = r.usage.records
    assert record.status_code == 502 and record.metadata.get("usage_estimated") == "true"
    retried = await r.pipeline.stream(r.call(BODY, key="s1"))  # the key was released: it runs again
    assert isinstance(retried, StreamingReply)
    await retried.abandon()


async def test_a_stream_whose_first_event_never_comes_ends_with_the_error_instead_of_raising() -> None:
    r = rig()
    late = BackendCallError("BACKEND_TIMEOUT", reason="timeout", maybe_processed=True, backend_id="a")
    r.backends.script("a", Streams((), first_read_fails=late))
    reply = await open_stream(r, key="s2")
    [failure] = await drain(reply)  # nothing raised out of the relay: the web layer renders this
    assert isinstance(failure, StreamFailure) and failure.error.code == "BACKEND_TIMEOUT"
    [record] = r.usage.records
    assert record.status_code == 504
    retried = await r.pipeline.stream(r.call(BODY, key="s2"))  # the key was released: it runs again
    assert isinstance(retried, StreamingReply)
    await retried.abandon()


async def test_a_finished_stream_is_replayed_whole_to_a_retry_without_a_backend_call() -> None:
    r = rig()
    r.backends.script("a", Streams(chat_stream("x", "y")))
    first = await drain(await open_stream(r, key="s2"))
    replay = await r.pipeline.stream(r.call(BODY, key="s2"))
    assert isinstance(replay, FinalReply) and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == b"".join(item for item in first if isinstance(item, bytes))
    assert replay.content_type == "text/event-stream" and len(r.backends.requests) == 1


async def test_a_client_gone_before_the_first_event_closes_the_call_refunds_and_frees_the_key() -> None:
    r = rig(org_limits=OrgLimits(budgets=BudgetLimits(daily_tokens=250)))
    r.backends.script("a", Streams(chat_stream("a"), gate=asyncio.Event()))
    body = {"max_tokens": 150}
    reply = await open_stream(r, key="s3", **body)
    await reply.events.aclose()
    await reply.abandon()
    assert r.backends.opened[0].closed and r.usage.records == []
    again = await open_stream(r, key="s3", **body)  # admitted again: the reservation came back
    await again.events.aclose()
    await again.abandon()


async def test_a_client_gone_mid_stream_is_billed_for_what_was_relayed_and_frees_the_key() -> None:
    r = rig()
    r.backends.script("a", Streams(chat_stream("one", "two", "three")))
    reply = await open_stream(r, key="s4")
    assert isinstance(await anext(reply.events), bytes)
    await reply.events.aclose()
    await reply.abandon()  # a no-op once the relay began: it settled itself
    [record] = r.usage.records
    assert record.status_code == 200 and record.metadata.get("usage_estimated") == "true"
    assert r.backends.opened[0].closed
    again = await open_stream(r, key="s4")
    await again.events.aclose()
    await again.abandon()


async def test_a_stream_refused_before_its_first_byte_fails_over() -> None:
    r = rig()
    r.backends.script("a", Fails(error_for_status("a", 502, b"{}", {})))
    r.backends.script("b", Streams(chat_stream("z")))
    reply = await open_stream(r)
    assert reply.headers["X-Routing-Decision"] == "FAILOVER"
    assert (await drain(reply))[-1] == DONE


async def test_a_stream_no_backend_answers_refunds_and_frees_the_key() -> None:
    r = rig(backend_ids=("a",))
    r.backends.script("a", Fails(error_for_status("a", 500, b"{}", {})))
    for _ in range(2):  # the second attempt is not refused as "still running"
        with pytest.raises(ApiError) as raised:
            await r.pipeline.stream(r.call(BODY, key="s5"))
        assert raised.value.code == "BACKEND_ERROR"
