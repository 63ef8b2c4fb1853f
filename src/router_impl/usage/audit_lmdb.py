"""The embedded audit store on LMDB: every worker on one data dir shares it, and it survives restarts.

Three sub-databases. ``events`` maps an event id to its AuditRecord JSON. ``index`` holds one empty
entry per (stream, time, event id), where a stream is every event, every event of one action, one
organisation's events, or one organisation's events of one action; a page is one backwards scan of
one stream. ``requests`` maps (request id, organisation) to the position (time, event id) of the
request's latest event in that organisation, so another organisation reusing the id never hides it;
an unrestricted lookup takes the newest across the id's organisations (one short prefix scan).

Like the idempotency store, transactions are a few microseconds (five small puts per event) and run
inline on the event loop; commits are not fsynced by default, so a process crash loses nothing and
an OS crash may lose the last few events. Reads judge retention themselves; ``sweep`` reclaims the
space of events past retention in bounded batches, oldest first. A full map fails writes with
AuditUnavailable (size ``map_size`` for the retention and traffic expected).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from router_impl.usage.audit import (
    DEFAULT_RETENTION_SECONDS,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditUnavailable,
    audit_record_json,
    decode_cursor,
    encode_cursor,
    event_from_json,
    page_limit,
    position,
    retention_cutoff_ms,
    to_ms,
)

DEFAULT_MAP_SIZE = 4 << 30
_MAX_MS = (1 << 64) - 1


def _stream(organization_id: str | None, action: str | None) -> bytes:
    """A self-delimiting stream name, so no stream's keys share a prefix with another's."""
    org = b"*" if organization_id is None else b"o" + _sized(organization_id.encode(), 2)
    return org + _sized((action or "").encode(), 1)


def _sized(raw: bytes, width: int) -> bytes:
    return len(raw).to_bytes(width, "big") + raw


def _streams(event: AuditEvent) -> tuple[bytes, ...]:
    org, action = event.organization_id, event.action
    return _stream(None, None), _stream(None, action), _stream(org, None), _stream(org, action)


def _request_key(request_id: str, organization_id: str) -> bytes:
    """Length-prefixed request id, then the organisation: one prefix holds every org's entry of an id
    (and never begins like the bare request ids written before the key held the organisation)."""
    return _sized(request_id.encode(), 2) + organization_id.encode()


def _at(millis: int, event_id: str) -> bytes:
    return millis.to_bytes(8, "big") + event_id.encode()


def _backwards(cursor: lmdb.Cursor[bytes], stream: bytes, upper: bytes) -> Iterator[bytes]:
    """Index keys of ``stream`` below ``upper`` (which starts with ``stream``), newest first."""
    found = cursor.prev() if cursor.set_range(upper) else cursor.last()
    while found:
        key = bytes(cursor.key())
        if not key.startswith(stream):  # below ``upper`` and outside the stream: below the stream
            return
        yield key
        found = cursor.prev()


class LmdbAuditLog:
    def __init__(
        self,
        path: Path | str,
        map_size: int = DEFAULT_MAP_SIZE,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        *,
        sync: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._retention = retention_seconds
        self._clock = clock
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(path), map_size=map_size, max_dbs=3, sync=sync, metasync=sync, readahead=False, mode=0o600
            )
            self._events = self._env.open_db(b"events")
            self._index = self._env.open_db(b"index")
            self._requests = self._env.open_db(b"requests")
        except lmdb.Error as exc:
            raise AuditUnavailable(f"cannot open the audit LMDB at {path}: {exc}") from exc

    def close(self) -> None:
        self._env.close()

    def __len__(self) -> int:
        """Events stored, within retention or not yet swept."""
        with self._env.begin() as txn:
            return int(txn.stat(self._events)["entries"])

    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        data = data or audit_record_json(event)
        at = _at(*position(event))
        request = _request_key(event.request_id, event.organization_id)
        with self._writing() as txn:
            txn.put(event.event_id.encode(), data, db=self._events)
            for stream in _streams(event):
                txn.put(stream + at, b"", db=self._index)
            latest = txn.get(request, db=self._requests)
            if latest is None or bytes(latest) < at:
                txn.put(request, at, db=self._requests)

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        cutoff = retention_cutoff_ms(self._clock(), self._retention)
        with self._reading() as txn:
            at = self._latest(txn, request_id, organization_id)
            if at is None or int.from_bytes(at[:8], "big") < cutoff:
                return None
            data = txn.get(at[8:], db=self._events)
        if data is None:
            return None
        event = self._decode(data)
        if organization_id is not None and event.organization_id != organization_id:
            return None  # only a legacy entry (one per id, any org) can point at another org's event
        return event

    def _latest(
        self, txn: lmdb.Transaction[bytes], request_id: str, organization_id: str | None
    ) -> bytes | None:
        if organization_id is not None:
            at = txn.get(_request_key(request_id, organization_id), db=self._requests)
        else:
            prefix = _sized(request_id.encode(), 2)
            cursor = txn.cursor(db=self._requests)
            found = cursor.set_range(prefix)
            at = None
            while found and cursor.key().startswith(prefix):
                at = max(at or b"", cursor.value())
                found = cursor.next()
        # Written before the index held the organisation: the id's latest event in any org.
        return at if at is not None else txn.get(request_id.encode(), db=self._requests)

    async def query(self, query: AuditQuery) -> AuditPage:
        limit = page_limit(query.limit)
        stream = _stream(query.organization_id, query.action)
        lowest = retention_cutoff_ms(self._clock(), self._retention)
        if query.since is not None:
            lowest = max(lowest, to_ms(query.since))
        upper = stream + _MAX_MS.to_bytes(8, "big")
        if query.until is not None:
            upper = stream + to_ms(query.until).to_bytes(8, "big")
        if query.cursor is not None:
            upper = min(upper, stream + _at(*decode_cursor(query.cursor)))
        items: list[AuditEvent] = []
        more = False
        with self._reading() as txn:
            for key in _backwards(txn.cursor(db=self._index), stream, upper):
                if int.from_bytes(key[len(stream) : len(stream) + 8], "big") < lowest:
                    break
                if len(items) == limit:
                    more = True
                    break
                data = txn.get(key[len(stream) + 8 :], db=self._events)
                if data is not None:  # an index entry without its event is a sweep in progress
                    items.append(self._decode(data))
        next_cursor = encode_cursor(position(items[-1])) if more and items else None
        return AuditPage(tuple(items), next_cursor)

    async def sweep(self, now: float, *, batch_size: int = 500) -> int:
        """Delete events past retention at ``now``, at most ``batch_size`` per write transaction;
        returns the count. Yields to the event loop between batches."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        cutoff = retention_cutoff_ms(now, self._retention)
        total = 0
        while True:
            removed = self._sweep_batch(cutoff, batch_size)
            total += removed
            if removed < batch_size:
                return total
            await asyncio.sleep(0)

    def _sweep_batch(self, cutoff: int, limit: int) -> int:
        everything = _stream(None, None)
        with self._writing() as txn:
            due: list[bytes] = []
            cursor = txn.cursor(db=self._index)
            if cursor.set_range(everything):
                for key in cursor.iternext(values=False):
                    if len(due) >= limit or not key.startswith(everything):
                        break
                    if int.from_bytes(key[len(everything) : len(everything) + 8], "big") >= cutoff:
                        break
                    due.append(bytes(key[len(everything) :]))
            for at in due:
                self._delete(txn, at)
        return len(due)

    def _delete(self, txn: lmdb.Transaction[bytes], at: bytes) -> None:
        event_key = at[8:]
        data = txn.get(event_key, db=self._events)
        if data is None:  # only the global entry is left of a half-deleted event
            txn.delete(_stream(None, None) + at, db=self._index)
            return
        try:
            event = event_from_json(bytes(data))
        except ValueError:  # unreadable: drop it; its other index entries point at nothing now
            txn.delete(_stream(None, None) + at, db=self._index)
            txn.delete(event_key, db=self._events)
            return
        for stream in _streams(event):
            txn.delete(stream + at, db=self._index)
        txn.delete(event_key, db=self._events)
        for request in (_request_key(event.request_id, event.organization_id), event.request_id.encode()):
            latest = txn.get(request, db=self._requests)
            if latest is not None and bytes(latest) == at:  # older events of the request are gone too
                txn.delete(request, db=self._requests)

    @staticmethod
    def _decode(data: bytes) -> AuditEvent:
        try:
            return event_from_json(bytes(data))
        except ValueError as exc:  # written by a newer format, or corrupt
            raise AuditUnavailable(f"unreadable audit event: {exc}") from exc

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction[bytes]]:
        try:
            with self._env.begin(buffers=False) as txn:
                yield txn
        except lmdb.Error as exc:
            raise AuditUnavailable(f"audit LMDB failed: {exc}") from exc

    @contextmanager
    def _writing(self) -> Iterator[lmdb.Transaction[bytes]]:
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.Error as exc:
            raise AuditUnavailable(f"audit LMDB failed: {exc}") from exc
