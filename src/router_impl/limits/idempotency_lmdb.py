"""The embedded idempotency store on LMDB: shared by every worker process on one data dir, survives restarts.

Each operation is one write transaction, and LMDB serialises write transactions across processes, so
``begin`` is atomic for all workers on the data dir. Transactions are a few microseconds and run inline on
the event loop (a thread hop would cost more than the work). Two sub-databases: ``records`` maps an entry
name to the entry, ``expiry`` indexes entries by when their lease or TTL ends, so ``sweep`` deletes expired
entries oldest first in bounded batches without reading the rest. ``begin`` also judges expiry on read, so
correctness never waits for a sweep.

By default commits are not fsynced (``sync=False``): LMDB stays consistent, and a process crash loses
nothing, but an OS crash may undo the last commits, i.e. forget a few recent replies. Open the store in
each worker after it started (never share an open environment across ``fork``), and give it a directory
of its own: LMDB refuses a second open of one environment in a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import orjson

from router_impl.limits.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_TTL_SECONDS,
    Begin,
    Completed,
    Entry,
    IdempotencyUnavailable,
    InFlight,
    Instant,
    Proceed,
    StoredReply,
    compact,
    decode_reply,
    duration_ms,
    encode_reply,
    entry_name,
    held_by,
    judge,
    lease_until_ms,
    new_token,
    to_ms,
)
from router_impl.limits.owners import owner_alive, owner_id

DEFAULT_MAP_SIZE = 1024 * 1024 * 1024
_IN_FLIGHT = "p"
_COMPLETED = "d"


def encode_entry(entry: Entry) -> bytes:
    """A JSON head line whose last item is ``until_ms``; a completed entry appends its encoded reply."""
    if isinstance(entry, InFlight):
        return orjson.dumps([_IN_FLIGHT, entry.fingerprint, entry.token, entry.owner, entry.until_ms])
    head = orjson.dumps([_COMPLETED, entry.fingerprint, entry.until_ms])
    return head + b"\n" + encode_reply(entry.reply)


def decode_entry(data: bytes) -> Entry:
    """The entry ``encode_entry`` wrote; ValueError for anything else."""
    head, _, rest = data.partition(b"\n")
    try:
        fields = orjson.loads(head)
        if fields[0] == _IN_FLIGHT:  # [p, fingerprint, token, (owner,) until_ms]: older entries lack owner
            owner = str(fields[3]) if len(fields) == 5 else ""
            return InFlight(str(fields[1]), str(fields[2]), until_ms=int(fields[-1]), owner=owner)
        if fields[0] == _COMPLETED:
            return Completed(fingerprint=str(fields[1]), reply=decode_reply(rest), until_ms=int(fields[2]))
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed idempotency entry: {exc}") from exc
    raise ValueError(f"unknown idempotency entry kind {fields[0]!r}")


def _until_of_entry(data: bytes) -> int:
    return int(orjson.loads(data.partition(b"\n")[0])[-1])


def _index_key(until_ms: int, name: bytes) -> bytes:
    return max(until_ms, 0).to_bytes(8, "big") + name


class LmdbIdempotencyStore:
    def __init__(
        self,
        path: Path | str,
        ttl: float = DEFAULT_TTL_SECONDS,
        lease: float = DEFAULT_LEASE_SECONDS,
        map_size: int = DEFAULT_MAP_SIZE,
        *,
        sync: bool = False,
        token_factory: Callable[[], str] = new_token,
        owner: str | None = None,
        owner_alive: Callable[[str], bool] = owner_alive,
    ) -> None:
        """``owner`` is this process (``owners.owner_id()``); an in-flight entry of an owner that
        ``owner_alive`` says is dead is free to take at once."""
        self.owner = owner_id() if owner is None else owner
        self._owner_alive = owner_alive
        self._ttl_ms = duration_ms(ttl, "ttl")
        self._lease_ms = duration_ms(lease, "lease")
        self._new_token = token_factory
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(path), map_size=map_size, max_dbs=2, sync=sync, metasync=sync, readahead=False, mode=0o600
            )
            self._records = self._env.open_db(b"records")
            self._expiry = self._env.open_db(b"expiry")
        except lmdb.Error as exc:
            raise IdempotencyUnavailable(f"cannot open the idempotency LMDB at {path}: {exc}") from exc

    def close(self) -> None:
        self._env.close()

    def __len__(self) -> int:
        """Entries stored, live or expired but not yet swept."""
        with self._env.begin() as txn:
            return txn.stat(self._records)["entries"]

    async def begin(
        self, namespace: str, key: str, fingerprint: str, now: Instant, deadline: Instant | None = None
    ) -> Begin:
        name = entry_name(namespace, key).encode()
        now_ms = to_ms(now)
        fingerprint = compact(fingerprint)
        with self._writing() as txn:
            raw = txn.get(name, db=self._records)
            entry = None if raw is None else decode_entry(raw)
            verdict = judge(entry, fingerprint, now_ms, self._owner_dead)
            if verdict is not None:
                return verdict
            token = self._new_token()
            until_ms = lease_until_ms(now_ms, self._lease_ms, deadline)
            self._replace(txn, name, entry, InFlight(fingerprint, token, until_ms, self.owner))
        return Proceed(token)

    def _owner_dead(self, owner: str) -> bool:
        return owner != self.owner and not self._owner_alive(owner)

    async def complete(self, namespace: str, key: str, token: str, reply: StoredReply, now: Instant) -> bool:
        name = entry_name(namespace, key).encode()
        until_ms = to_ms(now) + self._ttl_ms
        with self._writing() as txn:
            raw = txn.get(name, db=self._records)
            held = None if raw is None else decode_entry(raw)
            if held is None or not held_by(held, token):
                return False
            self._replace(txn, name, held, Completed(held.fingerprint, reply, until_ms))
        return True

    async def release(self, namespace: str, key: str, token: str) -> bool:
        name = entry_name(namespace, key).encode()
        with self._writing() as txn:
            raw = txn.get(name, db=self._records)
            held = None if raw is None else decode_entry(raw)
            if held is None or not held_by(held, token):
                return False
            txn.delete(name, db=self._records)
            txn.delete(_index_key(held.until_ms, name), db=self._expiry)
        return True

    async def sweep(self, now: Instant, *, batch_size: int = 1000) -> int:
        """Delete entries expired at ``now``, at most ``batch_size`` per write transaction; returns the count.

        Run it periodically (e.g. every minute) from a background task; it yields to the event loop between
        batches so that a large backlog never holds the write lock or the loop for long.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        now_ms = to_ms(now)
        total = 0
        while True:
            removed = self._sweep_batch(now_ms, batch_size)
            total += removed
            if removed < batch_size:
                return total
            await asyncio.sleep(0)

    def _sweep_batch(self, now_ms: int, limit: int) -> int:
        with self._writing() as txn:
            due: list[bytes] = []
            for index_key in txn.cursor(db=self._expiry).iternext(values=False):
                if len(due) >= limit or int.from_bytes(index_key[:8], "big") > now_ms:
                    break
                due.append(bytes(index_key))
            for index_key in due:
                txn.delete(index_key, db=self._expiry)
                name = index_key[8:]
                raw = txn.get(name, db=self._records)
                # An index entry always matches its record; the check guards against a stale index only.
                if raw is not None and max(_until_of_entry(raw), 0) == int.from_bytes(index_key[:8], "big"):
                    txn.delete(name, db=self._records)
        return len(due)

    def _replace(self, txn: lmdb.Transaction[bytes], name: bytes, old: Entry | None, new: Entry) -> None:
        if old is not None:
            txn.delete(_index_key(old.until_ms, name), db=self._expiry)
        txn.put(name, encode_entry(new), db=self._records)
        txn.put(_index_key(new.until_ms, name), b"", db=self._expiry)

    @contextmanager
    def _writing(self) -> Iterator[lmdb.Transaction[bytes]]:
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.Error as exc:
            raise IdempotencyUnavailable(f"idempotency LMDB failed: {exc}") from exc
        except ValueError as exc:  # an entry this version cannot read (corrupt or from a newer format)
            raise IdempotencyUnavailable(f"unreadable idempotency entry: {exc}") from exc
