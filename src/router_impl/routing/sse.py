"""Server-sent events from OpenAI-compatible backends: split a byte stream into event blocks, read them.

Pure code, no I/O. Blocks that arrive with LF line endings are passed on byte for byte; a
stream that uses CR or CRLF line endings is normalised to LF, so every block ends in b"\\n\\n".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

DONE = "[DONE]"
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
_LF = 0x0A


class SseProtocolError(ValueError):
    """The byte stream is not usable as server-sent events (e.g. an event larger than the cap)."""


class EventSplitter:
    """Cuts a stream of byte chunks into complete event blocks, whatever the chunk boundaries."""

    __slots__ = ("_held_cr", "_max_event_bytes", "_pending", "_scan_from")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._pending = b""
        self._scan_from = 0  # where in `_pending` the search for b"\n\n" resumes
        self._held_cr = False  # a trailing CR that may be the first half of a CRLF
        self._max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """The blocks completed by ``chunk``, each ending in b"\\n\\n"; blank lines between them dropped."""
        if self._held_cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        if self._pending:
            data = self._pending + chunk
            scan = self._scan_from
        else:
            data = chunk
            scan = 0
        blocks: list[bytes] = []
        start = 0
        size = len(data)
        while True:
            while start < size and data[start] == _LF:
                start += 1
            end = data.find(b"\n\n", max(start, scan))
            if end < 0:
                break
            blocks.append(data[start : end + 2])
            start = end + 2
        self._pending = data[start:]
        # A block boundary may begin on the last byte already searched.
        self._scan_from = max(len(self._pending) - 1, 0)
        if len(self._pending) > self._max_event_bytes:
            raise SseProtocolError("an event exceeds the size limit")
        return blocks

    def end(self) -> tuple[list[bytes], bytes]:
        """At the end of the stream: blocks a trailing CR completes, and the unterminated rest (or b"")."""
        blocks: list[bytes] = []
        if self._held_cr:
            self._held_cr = False
            blocks = self.feed(b"\n")
        rest = self._pending.strip(b"\n")
        self._pending, self._scan_from = b"", 0
        return blocks, rest

    def _normalise(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def split_events(chunks: Iterable[bytes], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[bytes]:
    """Every complete event block of a finished stream (an unterminated last event is dropped)."""
    splitter = EventSplitter(max_event_bytes)
    blocks = [block for chunk in chunks for block in splitter.feed(chunk)]
    return blocks + splitter.end()[0]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """The fields of one event block. ``data`` joins multi-line data with "\\n"; None when absent."""

    data: str | None
    event: str | None = None
    id: str | None = None


def parse_event(block: bytes) -> SseEvent:
    """Read one block's fields per the SSE format; comments (lines starting with ":") are skipped."""
    text = block.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data: list[str] = []
    event: str | None = None
    event_id: str | None = None
    for line in text.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    return SseEvent("\n".join(data) if data else None, event, event_id)


def is_done(event: SseEvent) -> bool:
    """True for OpenAI's end-of-stream sentinel, ``data: [DONE]``."""
    return event.data is not None and event.data.strip() == DONE


def chunk_json(event: SseEvent) -> dict[str, Any] | None:
    """The JSON object an event carries (a chat.completion.chunk or text_completion), or None."""
    if event.data is None or is_done(event):
        return None
    try:
        value = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_of(chunk: dict[str, Any]) -> TokenUsage | None:
    """The ``usage`` block of a chunk (OpenAI sends it on the last one), or None when absent or malformed."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    total = _count(usage.get("total_tokens"))
    return TokenUsage(prompt, completion, prompt + completion if total is None else total)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class StreamUsageTracker:
    """What a relay needs to know about the events it passed on: usage, text, [DONE], finish reason.

    ``last_was_usage_only`` marks the usage-only chunk a backend sends when asked for
    ``stream_options.include_usage``, so a relay that asked on its client's behalf can drop it.
    """

    __slots__ = ("_text", "_usage", "data_events", "done", "finish_reason", "last_was_usage_only")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._usage: TokenUsage | None = None
        self.data_events = 0
        self.done = False
        self.finish_reason: str | None = None
        self.last_was_usage_only = False

    def feed(self, block: bytes) -> None:
        self.last_was_usage_only = False
        event = parse_event(block)
        if event.data is None:
            return
        if is_done(event):
            self.done = True
            return
        self.data_events += 1
        chunk = chunk_json(event)
        if chunk is None:
            return
        usage = usage_of(chunk)
        choices = chunk.get("choices")
        if usage is not None:
            self._usage = usage
            self.last_was_usage_only = not choices
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._observe_choice(choice)

    def usage(self) -> TokenUsage | None:
        """The usage the backend reported (OpenAI sends it on the last chunk), if it did."""
        return self._usage

    @property
    def text(self) -> str:
        """The generated text so far, for estimating tokens when a backend reports no usage."""
        return "".join(self._text)

    def _observe_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(piece, str):
            self._text.append(piece)
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self.finish_reason = reason
