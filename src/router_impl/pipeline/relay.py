"""The streaming relay: a backend's event stream passed on one event behind, then settled.

The last event is held until ``settle`` has run (usage record committed, transcript stored), so a
client that saw the end can rely on both. A stream that broke (``StreamBroken``), whose first event
never came (``BackendCallError`` after the headers) or that ended without ``[DONE]`` ends with a
``StreamFailure`` item, which the web layer renders as an error event. A client that goes away
mid-stream still settles (from the generator's ``finally``), as unfinished.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass

from router_impl.errors import ApiError
from router_impl.pipeline.call import StreamFailure
from router_impl.routing.backend_errors import BackendCallError, StreamBroken
from router_impl.routing.sse import StreamUsageTracker


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """How a relayed stream ended, for its accounting."""

    finished: bool  # the backend's answer arrived whole
    status: int  # 200, or the failure's status (the client that left keeps 200)
    failure: ApiError | None  # the stream broke (``broken``) or ended early
    broken: bool
    tracker: StreamUsageTracker  # usage and text of what was relayed
    transcript: bytes | None  # every relayed event, when kept, whole and within the cap


Settle = Callable[[RelayOutcome], Awaitable[None]]


async def relay(
    events: AsyncIterable[bytes],
    settle: Settle,
    *,
    wants_usage: bool,
    keep_transcript: bool,
    max_transcript_bytes: int,
) -> AsyncGenerator[bytes | StreamFailure, None]:
    """``wants_usage``: pass on the usage-only chunk (the backend is always asked for one)."""
    tracker = StreamUsageTracker()
    transcript: list[bytes] | None = [] if keep_transcript else None
    kept = 0
    held: bytes | None = None
    settled = False
    try:
        failure: ApiError | None = None
        broken = False
        try:
            async for event in events:
                tracker.feed(event)
                if tracker.last_was_usage_only and not wants_usage:
                    continue
                if transcript is not None:
                    kept += len(event)
                    transcript = transcript if kept <= max_transcript_bytes else None
                    if transcript is not None:
                        transcript.append(event)
                if held is not None:
                    yield held
                held = event
        except StreamBroken as exc:
            broken = True
            code = "BACKEND_TIMEOUT" if "Timeout" in exc.reason else "BACKEND_ERROR"
            failure = ApiError(code, "The backend stream broke before the answer was complete.")
        except BackendCallError as exc:
            # The backend's headers had come, so the client's answer had begun, but its first event
            # did not (too late, cut or malformed): the stream ends with the error, as a break does.
            # Raised on, it aborted the client's connection mid-response.
            broken = True
            failure = ApiError(exc.code, "The backend stream broke before its first event.")
        else:
            if not tracker.done:
                failure = ApiError("BACKEND_ERROR", "The backend ended the stream before it was complete.")
        finished = failure is None
        settled = True
        await settle(
            RelayOutcome(
                finished=finished,
                status=200 if failure is None else failure.status_code,
                failure=failure,
                broken=broken,
                tracker=tracker,
                transcript=b"".join(transcript) if finished and transcript is not None else None,
            )
        )
        if held is not None:
            yield held
        if failure is not None:
            yield StreamFailure(failure)
    finally:
        if not settled:  # the client went away mid-stream
            await settle(RelayOutcome(False, 200, None, False, tracker, None))
