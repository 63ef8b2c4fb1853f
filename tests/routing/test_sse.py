"""Server-sent events: splitting at any chunk boundary, field parsing, usage, [DONE]."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_impl.routing.sse import (
    EventSplitter,
    SseEvent,
    SseProtocolError,
    StreamUsageTracker,
    TokenUsage,
    chunk_json,
    is_done,
    parse_event,
    split_events,
    usage_of,
)


def chunk(content: str | None = None, *, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = (
        []
        if usage is not None and content is None
        else [
            {
                "index": 0,
                "delta": {"content": content} if content is not None else {},
                "finish_reason": finish,
            }
        ]
    )
    body: dict = {"id": "c1", "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_one_event_per_chunk_is_passed_on_as_the_same_bytes():
    event = b'data: {"a":1}\n\n'
    blocks = EventSplitter().feed(event)
    assert blocks == [event]
    assert blocks[0] is event  # no copy on the common path


def test_an_event_split_across_chunks_comes_out_once_complete():
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b":1}\n") == []
    assert splitter.feed(b"\ndata: x\n\nda") == [b'data: {"a":1}\n\n', b"data: x\n\n"]
    assert splitter.end() == ([], b"da")


def test_crlf_and_cr_line_endings_are_normalised_to_lf():
    assert split_events([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == [
        b"data: a\n\n",
        b"data: b\n\n",
        b"data: c\n\n",
    ]


def test_a_crlf_split_between_chunks_is_one_line_ending():
    assert split_events([b"data: a\r", b"\n\r", b"\n"]) == [b"data: a\n\n"]


def test_a_trailing_cr_ends_the_last_event_at_the_end_of_the_stream():
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\r") == []  # the last CR could still be half of a CRLF
    assert splitter.end() == ([b"data: a\n\n"], b"")


def test_extra_blank_lines_between_events_are_dropped():
    assert split_events([b"\n\ndata: a\n\n\n\ndata: b\n\n\n"]) == [b"data: a\n\n", b"data: b\n\n"]


def test_comments_pass_through_as_blocks_and_carry_no_data():
    blocks = split_events([b": keep-alive\n\ndata: 1\n\n"])
    assert blocks == [b": keep-alive\n\n", b"data: 1\n\n"]
    assert parse_event(blocks[0]) == SseEvent(data=None)


def test_an_event_over_the_size_cap_is_refused():
    splitter = EventSplitter(max_event_bytes=16)
    splitter.feed(b"data: 0123456789")
    with pytest.raises(SseProtocolError):
        splitter.feed(b"abcdef")


def test_many_tiny_chunks_of_a_large_event_are_scanned_linearly():
    splitter = EventSplitter()
    payload = b"data: " + b"x" * 20_000 + b"\n\n"
    out = [block for i in range(len(payload)) for block in splitter.feed(payload[i : i + 1])]
    assert out == [payload]


def test_fields_multi_line_data_event_and_id():
    event = parse_event(b"event: delta\nid: 7\ndata: line one\ndata:line two\n: note\nretry: 5\n\n")
    assert event == SseEvent(data="line one\nline two", event="delta", id="7")


def test_a_field_without_colon_has_an_empty_value():
    assert parse_event(b"data\n\n") == SseEvent(data="")


def test_done_is_recognised_with_or_without_the_space():
    assert is_done(parse_event(b"data: [DONE]\n\n"))
    assert is_done(parse_event(b"data:[DONE]\n\n"))
    assert not is_done(parse_event(b'data: {"a":1}\n\n'))
    assert chunk_json(parse_event(b"data: [DONE]\n\n")) is None


def test_chunk_json_is_an_object_or_none():
    assert chunk_json(parse_event(b'data: {"object":"text_completion"}\n\n')) == {"object": "text_completion"}
    assert chunk_json(parse_event(b"data: [1, 2]\n\n")) is None
    assert chunk_json(parse_event(b"data: {not json\n\n")) is None
    assert chunk_json(parse_event(b": only a comment\n\n")) is None


def test_usage_of_reads_counts_and_fills_a_missing_total():
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}) == TokenUsage(
        3, 4, 7
    )
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == TokenUsage(3, 4, 7)
    assert usage_of({"usage": None}) is None
    assert usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": 4}}) is None
    assert usage_of({"usage": {"prompt_tokens": True, "completion_tokens": 4}}) is None
    assert usage_of({}) is None


def test_tracker_follows_a_chat_stream_with_usage():
    tracker = StreamUsageTracker()
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    for block in (chunk("Hello"), chunk(" world"), chunk(finish="stop"), chunk(usage=usage)):
        tracker.feed(block)
    assert tracker.last_was_usage_only
    tracker.feed(b"data: [DONE]\n\n")
    assert not tracker.last_was_usage_only
    assert tracker.done
    assert tracker.usage() == TokenUsage(5, 2, 7)
    assert tracker.text == "Hello world"
    assert tracker.finish_reason == "stop"
    assert tracker.data_events == 4


def test_tracker_reads_text_completion_chunks_and_no_usage():
    tracker = StreamUsageTracker()
    tracker.feed(
        b'data: {"object":"text_completion","choices":[{"index":0,"text":"a b","finish_reason":null}]}\n\n'
    )
    tracker.feed(
        b'data: {"object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}]}\n\n'
    )
    tracker.feed(b": comment\n\n")
    assert tracker.text == "a b"
    assert tracker.finish_reason == "length"
    assert tracker.usage() is None
    assert not tracker.done


# -- property: chunk boundaries never change the events ------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)
_line = st.one_of(
    st.builds(lambda v: "data: " + v, _text),
    st.builds(lambda v: "data:" + v, _text),
    st.builds(lambda v: "event: " + v, _text),
    st.builds(lambda v: ":" + v, _text),
    st.builds(lambda v: "id: " + v, _text),
)
_events = st.lists(st.lists(_line, min_size=1, max_size=4), min_size=1, max_size=8)


def _serialise(events: list[list[str]], newline: str, extra_blank: list[bool]) -> bytes:
    out = []
    for lines, extra in zip(events, extra_blank, strict=False):
        out.append("".join(line + newline for line in lines) + newline + (newline if extra else ""))
    return "".join(out).encode()


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(
    events=_events,
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    extra=st.lists(st.booleans(), min_size=8, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_chunking_gives_the_same_events(events, newline, extra, cuts):
    data = _serialise(events, newline, extra)
    whole = split_events([data])
    assert split_events(_cut(data, cuts)) == whole
    assert split_events([data[i : i + 1] for i in range(len(data))]) == whole
    assert len(whole) == len(events)
    assert all(block.endswith(b"\n\n") for block in whole)
    for block, lines in zip(whole, events, strict=True):
        data_lines = [line.partition(":")[2].removeprefix(" ") for line in lines if line.startswith("data:")]
        assert parse_event(block).data == ("\n".join(data_lines) if data_lines else None)
    if newline == "\n":  # LF streams are passed on byte for byte
        assert b"".join(whole) == _serialise(events, "\n", [False] * 8)
