"""A server-sent-events response that notices the client leaving.

It pumps events while watching ``receive()`` for ``http.disconnect``; when the client goes, the
pump is cancelled, so the event source's ``finally`` runs at once (closing the backend call and
accounting partial usage) instead of whenever the generator is garbage-collected. A stream that
failed ends with its ``StreamFailure`` rendered as an OpenAI ``error`` event (the SDKs raise on it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router_impl.errors import render
from router_impl.pipeline.call import StreamFailure


def error_event(failure: StreamFailure, trace_id: str) -> bytes:
    """OpenAI's clients raise on an error event; without it a cut answer looks complete."""
    return b"data: " + render(failure.error, trace_id=trace_id, request_id=None, openai=True) + b"\n\n"


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes | StreamFailure, None],
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        *,
        trace_id: str,
    ) -> None:
        super().__init__(content=None, status_code=200, headers=headers, media_type=self.media_type)
        self.events = events
        self.on_close = on_close
        self.trace_id = trace_id
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"] + [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump() -> None:
            async for event in self.events:
                body = event if isinstance(event, bytes) else error_event(event, self.trace_id)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping, watching = asyncio.create_task(pump()), asyncio.create_task(watch())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            for task in (pumping, watching):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await self.events.aclose()
            if self.on_close is not None:
                await self.on_close()
        if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
            raise pumping.exception()  # type: ignore[misc]
