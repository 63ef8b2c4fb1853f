"""An in-memory backend port (``routing.backend_port.BackendPort``): scripted answers per backend id.

For in-process tests of the pipeline and the dispatcher: no sockets, no threads, milliseconds.
Each backend answers from its script in order (the last answer repeats); every request is kept.
The real adapter (aiohttp) is tested against a real server in tests/routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from router_impl.config.model import BackendConfig
from router_impl.routing.backend_errors import BackendCallError, StreamBroken
from router_impl.routing.backend_port import BackendReply, BackendRequest


@dataclass(frozen=True)
class Reply:
    """A 2xx JSON answer."""

    document: dict[str, Any]


@dataclass(frozen=True)
class Fails:
    """The call fails before any answer (connect error, status, timeout...)."""

    error: BackendCallError


@dataclass(frozen=True)
class Streams:
    """An event stream: ``events`` (SSE blocks), then ``broken`` (a StreamBroken reason) or the end.
    ``gate``: when set, the stream waits for it before its first event (a client may leave first)."""

    events: tuple[bytes, ...]
    broken: str | None = None
    gate: asyncio.Event | None = None
    # Raised by the first read instead of any event, as BackendEvents does when the headers came
    # but the first event did not (too late, cut, malformed).
    first_read_fails: BackendCallError | None = None


Answer = Reply | Fails | Streams


def chat_reply(text: str = "hello", prompt_tokens: int = 3, completion_tokens: int = 2) -> Reply:
    return Reply(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
    )


def sse(document: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def chat_stream(*words: str, prompt_tokens: int = 3, done: bool = True) -> tuple[bytes, ...]:
    """Chunks of ``words``, the usage-only chunk and [DONE] (unless ``done`` is False)."""
    chunks = [sse({"choices": [{"index": 0, "delta": {"content": word}}]}) for word in words]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words)}
    chunks.append(sse({"choices": [], "usage": usage}))
    return (*chunks, DONE) if done else tuple(chunks)


@dataclass
class _Opened:
    answer: Streams
    backend_id: str
    closed: bool = False
    relayed: int = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        if self.answer.gate is not None:
            await self.answer.gate.wait()
        if self.answer.first_read_fails is not None:
            raise self.answer.first_read_fails
        for event in self.answer.events:
            if self.closed:
                return
            self.relayed += 1
            yield event
        if self.answer.broken is not None:
            raise StreamBroken(self.backend_id, self.relayed, self.answer.broken)

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeBackends:
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[tuple[str, BackendRequest]] = field(default_factory=list)
    busy: dict[str, int] = field(default_factory=dict)  # in_flight as the dispatcher sees it
    opened: list[_Opened] = field(default_factory=list)

    def script(self, backend_id: str, *answers: Answer) -> None:
        self.scripts[backend_id] = list(answers)

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(request.body) for _, request in self.requests]

    def called(self) -> list[str]:
        return [backend_id for backend_id, _ in self.requests]

    def in_flight(self, backend_id: str) -> int:
        return self.busy.get(backend_id, 0)

    def _next(self, backend: BackendConfig, request: BackendRequest) -> Answer:
        self.requests.append((backend.id, request))
        script = self.scripts.get(backend.id)
        if not script:
            raise AssertionError(f"no answer scripted for backend {backend.id!r}")
        return script.pop(0) if len(script) > 1 else script[0]

    async def send(self, backend: BackendConfig, request: BackendRequest) -> BackendReply:
        answer = self._next(backend, request)
        if isinstance(answer, Fails):
            raise answer.error
        if not isinstance(answer, Reply):
            raise AssertionError("a stream scripted for a non-streamed call")
        return BackendReply(200, orjson.dumps(answer.document), {}, 1.0, answer.document)

    async def open_stream(self, backend: BackendConfig, request: BackendRequest) -> _Opened:
        answer = self._next(backend, request)
        if isinstance(answer, Fails):
            raise answer.error
        if not isinstance(answer, Streams):
            raise AssertionError("a whole reply scripted for a streamed call")
        opened = _Opened(answer, backend.id)
        self.opened.append(opened)
        return opened
