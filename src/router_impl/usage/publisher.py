"""Drains the outbox, oldest first, to a transport (Kafka or JSON Lines files); deletes what was delivered.

Each round publishes a batch, waits for every delivery report, deletes the delivered entries and, when
some failed, backs off and starts again from the oldest entry left, so a failed record is re-sent before
any later record of its organisation. Delivery is at least once: a record may reach the topic twice
(same ``record_id``), never zero times. One publisher per data dir: worker processes sharing it take
turns through a lock file, and the others idle. Each round is one ``usage.publish`` span, a trace of
its own, linked to the requests whose records it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import orjson
import structlog

from router_impl.telemetry.tracing import Tracing, link_to
from router_impl.usage.outbox import LmdbOutbox, OutboxError
from router_impl.usage.outbox_entry import OutboxEntry

log = structlog.get_logger("router.usage.publisher")
# A span keeps at most 128 links (OpenTelemetry's default limit); a round links its first records.
_MAX_LINKS = 128


class Transport(Protocol):
    async def publish(self, entries: Sequence[OutboxEntry], within_seconds: float) -> set[int]:
        """Deliver ``entries``; returns the sequence numbers confirmed delivered within ``within_seconds``."""
        ...

    async def close(self) -> None: ...


class PublisherLease:
    """An exclusive, non-blocking lock file: the OS releases it when its holder exits, even by kill -9."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class Publisher:
    def __init__(
        self,
        outbox: LmdbOutbox,
        transport: Transport,
        *,
        batch_size: int = 2000,
        publish_timeout: float = 35.0,
        idle_seconds: float = 0.5,
        linger_seconds: float = 0.25,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        lease: PublisherLease | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        on_round: Callable[[str, int, int], None] | None = None,
        tracer: Tracing | None = None,
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.batch_size = batch_size
        self.publish_timeout = publish_timeout
        self.idle_seconds = idle_seconds
        # After new entries arrive, wait this long for more before a round: one round (one transport
        # write, one delete commit) then serves many requests instead of competing with each append
        # for the outbox's writer.
        self.linger_seconds = linger_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease = lease or PublisherLease(outbox.path / "publisher.lock")
        self.delivered = 0  # records confirmed delivered by this publisher
        self.failing = False  # the last round left records undelivered
        self._monotonic = monotonic
        self._on_round = on_round  # (topic, delivered, failed) after each round, e.g. for metrics
        self.tracer = tracer or Tracing()
        self._task: asyncio.Task[None] | None = None
        self._deadline: float | None = None  # set by drain: stop when empty or at this monotonic time
        self._stop_requested = asyncio.Event()

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop_requested.clear()
            self._deadline = None
            self._task = asyncio.create_task(self.run(), name="usage-publisher")

    async def run(self) -> None:
        """Publish until ``drain`` says stop; failures are logged and retried, never raised."""
        backoff = self.backoff_initial
        while True:
            if self._deadline is not None and self._remaining() <= 0:
                return
            if not self.lease.acquire():
                if self._deadline is not None:
                    return  # another process publishes this data dir; it will drain what is left
                await self._pause(self.idle_seconds)
                continue
            seen = self.outbox.generation
            try:
                entries = await self.outbox.read(self.batch_size)
            except OutboxError as exc:
                log.error("usage_outbox_read_failed", error=str(exc))
                await self._pause(backoff)
                continue
            if not entries:
                if self._deadline is not None:
                    return
                await self._wait_for_entries(seen)
                continue
            if await self._publish_round(entries):
                backoff = self.backoff_initial
            else:
                await self._pause(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _publish_round(self, entries: list[OutboxEntry]) -> bool:
        """True when every entry was delivered and deleted."""
        with self.tracer.root_span("usage.publish", {"router.publish.entries": len(entries)}) as span:
            if span.is_recording():
                for trace_id, span_id in _traced_requests(entries, _MAX_LINKS):
                    link_to(span, trace_id, span_id)
            complete = await self._deliver(entries)
            span.set_attribute("router.publish.complete", complete)
            return complete

    async def _deliver(self, entries: list[OutboxEntry]) -> bool:
        timeout = self.publish_timeout if self._deadline is None else max(self._remaining(), 0.05)
        try:
            delivered = await self.transport.publish(entries, timeout)
        except Exception as exc:
            log.error("usage_publish_failed", entries=len(entries), error=str(exc))
            delivered = set()
        if delivered:
            try:
                await self.outbox.delete(delivered)
            except OutboxError as exc:
                # Not deleted: they will be sent again (duplicates share their record_id).
                log.error("usage_outbox_delete_failed", entries=len(delivered), error=str(exc))
                return False
            self.delivered += len(delivered)
        complete = len(delivered) == len(entries)
        if self._on_round is not None:
            counts: dict[str, list[int]] = {}
            for entry in entries:
                counts.setdefault(entry.topic, [0, 0])[0 if entry.seq in delivered else 1] += 1
            for topic, (ok, failed) in counts.items():
                self._on_round(topic, ok, failed)
        if complete and self.failing:
            log.info("usage_publish_recovered", backlog=self.outbox.backlog().count)
        elif not complete:
            backlog = self.outbox.backlog()
            log.warning(
                "usage_publish_incomplete",
                delivered=len(delivered),
                attempted=len(entries),
                backlog=backlog.count,
                oldest_age_seconds=round(backlog.oldest_age_seconds, 3),
            )
        self.failing = not complete
        return complete

    async def _wait_for_entries(self, seen: int) -> None:
        waiter = asyncio.ensure_future(self.outbox.wait_for_commit(seen, self.idle_seconds))
        stopper = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()
        if self.linger_seconds > 0 and self.outbox.generation != seen:
            await self._pause(self.linger_seconds)

    async def _pause(self, seconds: float) -> None:
        if self._deadline is not None:
            await asyncio.sleep(min(seconds, max(self._remaining(), 0.0)))
            return
        with contextlib.suppress(TimeoutError):  # woken early by drain
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    def _remaining(self) -> float:
        return float("inf") if self._deadline is None else self._deadline - self._monotonic()

    async def drain(self, deadline_seconds: float) -> int:
        """Stop after publishing what can be published within ``deadline_seconds``; returns entries left.

        Runs the publishing loop itself when it was never started (e.g. a one-shot flush)."""
        self._deadline = self._monotonic() + deadline_seconds
        self._stop_requested.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="usage-publisher-drain")
        try:
            await asyncio.wait_for(asyncio.shield(self._task), max(deadline_seconds, 0.0) + 1.0)
        except TimeoutError:
            # A delivery round outlived the deadline; its entries stay on disk for the next start.
            self._task.cancel()
        left = self.outbox.backlog().count
        if left and not self.lease.held:
            log.info("usage_drain_left_to_other_process", left=left)
        elif left:
            log.warning("usage_drain_incomplete", left=left, deadline_seconds=deadline_seconds)
        else:
            log.info("usage_drained", delivered=self.delivered)
        return left

    async def close(self) -> None:
        """Stop at once (no drain), close the transport, let another process publish."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.transport.close()
        self.lease.release()


def _traced_requests(entries: Sequence[OutboxEntry], limit: int) -> list[tuple[str, str]]:
    """(trace id, span id) of the requests behind the first ``limit`` entries that name both (usage
    records do; audit events carry no span id). Reads a bounded prefix of the batch."""
    found: list[tuple[str, str]] = []
    for entry in entries[: limit * 4]:
        if len(found) >= limit:
            break
        try:
            document = orjson.loads(entry.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(document, dict):
            trace_id, span_id = document.get("trace_id"), document.get("span_id")
            if isinstance(trace_id, str) and isinstance(span_id, str):
                found.append((trace_id, span_id))
    return found
