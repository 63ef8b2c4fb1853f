"""The durable outbox: a usage record or audit event is on local disk (LMDB) before its request completes.

``append`` returns once the entry's write transaction committed. Concurrent appends are group-committed:
they queue while a commit runs and the next commit takes them all, so one transaction (one fsync with
``sync=True``) serves many requests.

``sync=True`` (durability ``machine``) fsyncs every commit: an acknowledged entry survives a machine
crash. Commits and deletes then run on the outbox's own writer thread, never on the event loop.
``sync=False`` (durability ``process``) skips the fsync: a killed process loses nothing (the data is in
the kernel's page cache), but a machine crash may lose the commits of the last ~30 s. Such a commit is
a few page-cache writes (tens of microseconds), cheaper than a hand-off to a thread and back, so it
runs on the event loop; deletes too, in chunks of ``_DELETE_CHUNK`` keys with the loop free between.
Batch reads (for the publisher) run on a thread in both modes: LMDB readers never wait for the writer.

Entries are keyed by a sequence number (big-endian u64, never reused) so iteration is append order. A
``meta`` sub-database holds the next sequence number and the stored bytes, updated in the same
transactions, so several worker processes may append to one data dir. Past ``max_bytes`` the outbox
stops ``accepting`` (callers refuse new billable work) until deletes bring it to ``resume_fraction`` of
the cap; ``append`` itself still takes entries up to ``max_bytes + reserve_bytes`` so that requests
admitted before the gate closed keep their records, and raises ``OutboxFull`` only past that.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lmdb
import structlog

from router_impl.usage.outbox_entry import HEAD as _HEAD
from router_impl.usage.outbox_entry import SEQ as _SEQ
from router_impl.usage.outbox_entry import OutboxEntry, decode_entry, encode_entry, stored_size

log = structlog.get_logger("router.usage.outbox")

# 24 h at 1,000 records/s of ~600 bytes (+14 bytes of header, +8 of key) is ~53 GB.
DEFAULT_MAX_BYTES = 64 * 1024**3
DEFAULT_MAX_BATCH = 4096
_STATE = struct.Struct(">QQ")  # next sequence number, stored bytes
_STATE_KEY = b"state"
_REFRESH_SECONDS = 1.0  # how stale the in-memory view may get when other processes write too
_DELETE_CHUNK = 256  # keys per delete transaction on the event loop (sync=False): ~0.5 ms at most

OutboxStatus = Literal["ok", "warn", "full"]


class OutboxError(RuntimeError):
    """The outbox cannot store or read entries."""


class OutboxFull(OutboxError):
    """The outbox reached its hard limit; the entry was not stored."""


@dataclass(frozen=True)
class Backlog:
    count: int
    stored_bytes: int
    oldest_age_seconds: float  # 0.0 when empty


@dataclass(frozen=True)
class _View:
    count: int
    stored_bytes: int
    oldest_ms: int | None


@dataclass
class _Pending:
    topic: bytes
    key: bytes
    value: bytes
    appended_ms: int
    size: int  # as counted in stored bytes
    future: asyncio.Future[None]


def default_map_size(hard_limit: int) -> int:
    """Room for the entries' pages (~4 % over the payload when appended in order), the free list and
    the copy-on-write pages of the running transaction."""
    return hard_limit * 3 // 2 + 256 * 1024 * 1024


class LmdbOutbox:
    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        reserve_bytes: int | None = None,
        resume_fraction: float = 0.9,
        warn_fraction: float = 0.5,
        warn_age_seconds: float = 60.0,
        sync: bool = True,
        map_size: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1 or not 0 < resume_fraction < 1 or not 0 < warn_fraction <= 1:
            raise ValueError("max_bytes must be positive and the fractions within (0, 1)")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.hard_limit = max_bytes + (max_bytes // 20 if reserve_bytes is None else reserve_bytes)
        self.resume_bytes = int(max_bytes * resume_fraction)
        self.warn_bytes = int(max_bytes * warn_fraction)
        self.warn_age_seconds = warn_age_seconds
        self.sync = sync
        self.commits = 0  # write transactions that stored appended entries (group commit makes it small)
        self._max_batch = max_batch
        self._clock = clock
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size or default_map_size(self.hard_limit),
                max_dbs=2,
                sync=sync,
                metasync=sync,
                readahead=False,
                mode=0o600,
            )
            self._entries = self._env.open_db(b"entries")
            self._meta = self._env.open_db(b"meta")
        except lmdb.Error as exc:
            raise OutboxError(f"cannot open the outbox LMDB at {self.path}: {exc}") from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-outbox")
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being committed
        self._idle.set()
        self._committed = asyncio.Event()
        self._generation = 0
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False
        self._accepting = True
        self._view = self._read_view()
        self._view_at = time.monotonic()
        self._update_gate()

    # -- appending -------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False from ``max_bytes`` until the backlog is back under ``resume_fraction`` of it."""
        self._refresh_if_stale()
        return self._accepting

    async def append(self, topic: str, key: bytes, value: bytes) -> None:
        """Store one entry; returns once it is committed to disk. Raises OutboxFull past the hard limit."""
        if self._closed:
            raise OutboxError("the outbox is closed")
        topic_bytes = topic.encode()
        size = _HEAD.size + len(topic_bytes) + len(key) + len(value) + _SEQ.size
        if self._view.stored_bytes + self._queued_bytes + size > self.hard_limit:
            raise OutboxFull(f"usage outbox holds {self._view.stored_bytes} bytes (hard limit reached)")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        appended_ms = int(self._clock() * 1000)
        self._queue.append(_Pending(topic_bytes, key, value, appended_ms, size, future))
        self._queued_bytes += size
        self._idle.clear()
        self._wake.set()
        if self._batcher is None or self._batcher.done():
            # A context of its own: not the bound log context (request_id) of the request that woke it.
            self._batcher = asyncio.create_task(
                self._run_batcher(), name="usage-outbox-batcher", context=contextvars.Context()
            )
        # Shielded: a cancelled caller does not un-commit its entry, and must not break the batcher.
        await asyncio.shield(future)

    async def _run_batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: len(batch)]
                try:
                    if self.sync:
                        view = await loop.run_in_executor(self._executor, self._commit, batch)
                    else:
                        view = self._commit(batch)
                except Exception as exc:
                    log.error("usage_outbox_commit_failed", entries=len(batch), error=str(exc))
                    failure = exc if isinstance(exc, OutboxError) else OutboxError(f"commit failed: {exc}")
                    self._settle(batch, failure)
                    continue
                finally:
                    self._queued_bytes -= sum(pending.size for pending in batch)
                self.commits += 1
                self._set_view(view)
                self._settle(batch, None)
                self._generation += 1
                self._committed.set()
            self._idle.set()

    @staticmethod
    def _settle(batch: list[_Pending], error: Exception | None) -> None:
        for pending in batch:
            if pending.future.done():
                continue
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)

    def _commit(self, batch: list[_Pending]) -> _View:
        try:
            with self._env.begin(write=True) as txn:
                next_seq, stored = self._state(txn)
                cursor = txn.cursor(db=self._entries)
                for pending in batch:
                    data = encode_entry(pending.topic, pending.key, pending.value, pending.appended_ms)
                    cursor.put(_SEQ.pack(next_seq), data, append=True)
                    next_seq += 1
                    stored += stored_size(data)
                txn.put(_STATE_KEY, _STATE.pack(next_seq, stored), db=self._meta)
                return self._view_in(txn, stored)
        except lmdb.MapFullError as exc:
            raise OutboxFull(f"the outbox LMDB map is full: {exc}") from exc
        except lmdb.Error as exc:
            raise OutboxError(f"outbox commit failed: {exc}") from exc

    # -- publishing ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Counts this process's commits; pass it to ``wait_for_commit`` to sleep until the next one."""
        return self._generation

    async def wait_for_commit(self, seen: int, within: float) -> None:
        """Return when a commit after ``seen`` happened in this process, or after ``within`` seconds."""
        if self._generation != seen:
            return
        self._committed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._committed.wait(), within)

    async def read(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` entries, in append order. Off the commit thread: LMDB readers never wait
        for the writer, and appends must not wait behind a large read."""
        return await asyncio.to_thread(self._read, limit)

    def _read(self, limit: int) -> list[OutboxEntry]:
        entries: list[OutboxEntry] = []
        with self._env.begin() as txn:
            for seq_key, data in txn.cursor(db=self._entries).iternext():
                if len(entries) >= limit:
                    break
                entries.append(decode_entry(seq_key, data))
        return entries

    async def delete(self, seqs: Iterable[int]) -> None:
        """Remove delivered entries; unknown sequence numbers are ignored."""
        keys = [_SEQ.pack(seq) for seq in seqs]
        if keys and self.sync:
            view = await asyncio.get_running_loop().run_in_executor(self._executor, self._delete, keys)
            self._set_view(view)
            return
        for start in range(0, len(keys), _DELETE_CHUNK):
            if start:
                await asyncio.sleep(0)  # let requests run between chunks
            self._set_view(self._delete(keys[start : start + _DELETE_CHUNK]))

    def _delete(self, keys: list[bytes]) -> _View:
        try:
            with self._env.begin(write=True) as txn:
                next_seq, stored = self._state(txn)
                for key in keys:
                    data = txn.pop(key, db=self._entries)
                    if data is not None:
                        stored -= stored_size(data)
                stored = max(stored, 0)
                txn.put(_STATE_KEY, _STATE.pack(next_seq, stored), db=self._meta)
                return self._view_in(txn, stored)
        except lmdb.Error as exc:
            raise OutboxError(f"outbox delete failed: {exc}") from exc

    # -- observing -------------------------------------------------------------------------------

    def backlog(self) -> Backlog:
        """Entries waiting, their bytes, the oldest one's age: from memory, refreshed about once a second."""
        self._refresh_if_stale()
        view = self._view
        age = 0.0 if view.oldest_ms is None else max(self._clock() - view.oldest_ms / 1000, 0.0)
        return Backlog(view.count, view.stored_bytes, age)

    def status(self) -> OutboxStatus:
        """``full`` while not accepting; ``warn`` past ``warn_fraction`` of the cap or the warning age."""
        backlog = self.backlog()
        if not self._accepting:
            return "full"
        if backlog.stored_bytes >= self.warn_bytes or backlog.oldest_age_seconds > self.warn_age_seconds:
            return "warn"
        return "ok"

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._view_at > _REFRESH_SECONDS and not self._closed:
            self._set_view(self._read_view())

    def _read_view(self) -> _View:
        with self._env.begin() as txn:
            return self._view_in(txn, self._state(txn)[1])

    def _set_view(self, view: _View) -> None:
        self._view = view
        self._view_at = time.monotonic()
        self._update_gate()

    def _update_gate(self) -> None:
        stored = self._view.stored_bytes
        if self._accepting and stored >= self.max_bytes:
            self._accepting = False
            log.error("usage_outbox_full", stored_bytes=stored, max_bytes=self.max_bytes)
        elif not self._accepting and stored <= self.resume_bytes:
            self._accepting = True
            log.warning("usage_outbox_accepting_again", stored_bytes=stored, max_bytes=self.max_bytes)

    def _state(self, txn: lmdb.Transaction[bytes]) -> tuple[int, int]:
        raw = txn.get(_STATE_KEY, db=self._meta)
        if raw is None:
            return 1, 0
        next_seq, stored = _STATE.unpack(raw)
        return int(next_seq), int(stored)

    def _view_in(self, txn: lmdb.Transaction[bytes], stored: int) -> _View:
        cursor = txn.cursor(db=self._entries)
        oldest_ms = _HEAD.unpack_from(cursor.value())[0] if cursor.first() else None
        return _View(txn.stat(self._entries)["entries"], stored, oldest_ms)

    async def close(self) -> None:
        """Commit what is queued, then close; appends after this raise OutboxError."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None and not self._batcher.done():
            await self._idle.wait()
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        self._executor.shutdown(wait=True)
        self._env.close()


def read_backlog(path: Path | str, clock: Callable[[], float] = time.time) -> Backlog:
    """The backlog of an outbox another process may hold open (LMDB allows concurrent readers)."""
    try:
        env = lmdb.open(str(path), readonly=True, max_dbs=2, create=False, readahead=False)
    except lmdb.Error as exc:
        raise OutboxError(f"cannot open the outbox LMDB at {path}: {exc}") from exc
    try:
        with env.begin() as txn:
            try:
                entries = env.open_db(b"entries", txn=txn, create=False)
                meta = env.open_db(b"meta", txn=txn, create=False)
            except lmdb.NotFoundError:
                return Backlog(0, 0, 0.0)
            raw = txn.get(_STATE_KEY, db=meta)
            stored = 0 if raw is None else int(_STATE.unpack(raw)[1])
            cursor = txn.cursor(db=entries)
            oldest_ms = _HEAD.unpack_from(cursor.value())[0] if cursor.first() else None
            count = txn.stat(entries)["entries"]
    finally:
        env.close()
    age = 0.0 if oldest_ms is None else max(clock() - oldest_ms / 1000, 0.0)
    return Backlog(count, stored, age)
