"""A streamed backend call: raw SSE event blocks relayed as they arrive, never the whole answer held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from yarl import URL

from router_impl.routing.backend_errors import BackendCallError, StreamBroken, error_for_status
from router_impl.routing.backend_transport import map_transport_error, read_limited
from router_impl.routing.sse import EventSplitter, SseProtocolError


@dataclass(frozen=True, slots=True)
class StreamCall:
    """Everything one streamed call needs, resolved by the client before it starts."""

    backend_id: str
    session: aiohttp.ClientSession
    url: URL
    body: bytes
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout
    first_event_s: float
    deadline_bound: bool
    max_error_body: int


class BackendStream:
    """``async with`` it: sends the request, checks the answer starts as an event stream, and
    yields the event iterator. On exit the connection goes back to the pool when the stream
    was read to its end, and is closed otherwise (the client went away, or an error)."""

    def __init__(
        self, call: StreamCall, *, on_enter: Callable[[], None], on_exit: Callable[[], None]
    ) -> None:
        self._call = call
        self._on_enter = on_enter
        self._on_exit = on_exit
        self._events: BackendEvents | None = None
        self._entered = False

    async def __aenter__(self) -> BackendEvents:
        call = self._call
        loop = asyncio.get_running_loop()
        first_event_at = loop.time() + call.first_event_s
        self._on_enter()
        self._entered = True
        try:
            self._events = BackendEvents(await self._open(first_event_at), call.backend_id, first_event_at)
        except BaseException:
            self._leave()
            raise
        return self._events

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Safe to call more than once (a relay may call it from several clean-up paths)."""
        try:
            if self._events is not None:
                self._events.finish()
        finally:
            self._leave()

    def _leave(self) -> None:
        if self._entered:
            self._entered = False
            self._on_exit()

    async def _open(self, first_event_at: float) -> aiohttp.ClientResponse:
        call = self._call
        try:
            # aiohttp's own connect timeout fires first when it is shorter, so "nothing was sent"
            # stays distinguishable; this one bounds connect + send + headers by the caller's budget.
            async with asyncio.timeout_at(first_event_at):
                try:
                    response = await call.session.post(
                        call.url,
                        data=call.body,
                        headers=call.headers,
                        timeout=call.timeout,
                        allow_redirects=False,
                    )
                except aiohttp.ClientConnectionError as exc:  # no byte of the answer yet
                    raise map_transport_error(
                        exc, call.backend_id, deadline_bound=call.deadline_bound, before_response=True
                    ) from None
                try:
                    await self._check(response)
                except BaseException:
                    response.close()
                    raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise map_transport_error(exc, call.backend_id, deadline_bound=call.deadline_bound) from None
        return response

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        call = self._call
        status = response.status
        if status < 200 or status >= 300:
            body = await read_limited(
                response, call.max_error_body, backend_id=call.backend_id, truncate=True
            )
            raise error_for_status(call.backend_id, status, body, response.headers)
        if response.content_type != "text/event-stream":
            raise BackendCallError(
                "BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id=call.backend_id
            )


class BackendEvents:
    """Async iterator of raw SSE blocks (bytes ending in b"\\n\\n"), including comment blocks."""

    __slots__ = ("_at_eof", "_backend_id", "_first_event_at", "_ready", "_relayed", "_response", "_splitter")

    def __init__(self, response: aiohttp.ClientResponse, backend_id: str, first_event_at: float) -> None:
        self._response = response
        self._backend_id = backend_id
        self._first_event_at = first_event_at
        self._splitter = EventSplitter()
        self._ready: list[bytes] = []
        self._relayed = 0
        self._at_eof = False

    @property
    def relayed(self) -> int:
        """Blocks handed out so far."""
        return self._relayed

    def __aiter__(self) -> BackendEvents:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._at_eof:
                raise StopAsyncIteration
            await self._read()
        self._relayed += 1
        return self._ready.pop(0)

    async def _read(self) -> None:
        content = self._response.content
        try:
            if self._relayed == 0:
                async with asyncio.timeout_at(self._first_event_at):
                    chunk = await content.readany()
            else:
                chunk = await content.readany()
            if chunk:
                self._ready = self._splitter.feed(chunk)
                return
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, type(exc).__name__) from None
        except SseProtocolError:
            raise self._failure(None, "oversized event") from None
        self._at_eof = True
        self._ready, rest = self._splitter.end()
        if rest:
            raise self._failure(None, "truncated event")
        if self._relayed == 0 and not self._ready:
            raise self._failure(None, "empty stream")

    def _failure(self, exc: BaseException | None, reason: str) -> Exception:
        self._response.close()
        self._at_eof = True
        if self._relayed > 0:
            return StreamBroken(self._backend_id, self._relayed, reason)
        if exc is None:
            return BackendCallError(
                "BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id=self._backend_id
            )
        return map_transport_error(exc, self._backend_id, deadline_bound=False)

    def finish(self) -> None:
        """Give the connection back when the stream was read to its end; close it otherwise."""
        if self._at_eof and not self._ready and self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class OpenedBackendStream:
    """A ``BackendStream`` once entered, as the backend port hands it out: its events and ``close``."""

    __slots__ = ("_closed", "_events", "_stream")

    def __init__(self, stream: BackendStream, events: BackendEvents) -> None:
        self._stream = stream
        self._events = events
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stream.__aexit__(None, None, None)
