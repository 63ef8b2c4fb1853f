"""The in-process idempotency store: one worker's TTL map, bounded in entries and in stored reply bytes.

Each call runs without an ``await`` in between, so every operation is atomic on the event loop. Leases and
the TTL are uniform, so insertion order is expiry order: expired entries are dropped from the front as new
ones arrive, and when full the oldest completed entries are evicted first. In-flight markers are never
evicted (that would let a duplicate run and bill twice); when they alone fill the map, ``begin`` raises
``IdempotencyUnavailable``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from router_impl.limits.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_TTL_SECONDS,
    Begin,
    Completed,
    IdempotencyUnavailable,
    InFlight,
    Instant,
    Proceed,
    StoredReply,
    compact,
    duration_ms,
    entry_name,
    held_by,
    judge,
    lease_until_ms,
    new_token,
    to_ms,
)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def reply_size(reply: StoredReply) -> int:
    """What a stored reply counts against ``max_bytes``: body and header text (not object overhead)."""
    return len(reply.body) + len(reply.content_type) + sum(len(n) + len(v) for n, v in reply.headers)


class MemoryIdempotencyStore:
    def __init__(
        self,
        max_entries: int = 100_000,
        ttl: float = DEFAULT_TTL_SECONDS,
        lease: float = DEFAULT_LEASE_SECONDS,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        token_factory: Callable[[], str] = new_token,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl_ms = duration_ms(ttl, "ttl")
        self._lease_ms = duration_ms(lease, "lease")
        self._new_token = token_factory
        self._in_flight: OrderedDict[str, InFlight] = OrderedDict()
        self._completed: OrderedDict[str, Completed] = OrderedDict()
        self._completed_bytes = 0

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._completed)

    @property
    def stored_bytes(self) -> int:
        return self._completed_bytes

    async def begin(
        self, namespace: str, key: str, fingerprint: str, now: Instant, deadline: Instant | None = None
    ) -> Begin:
        name = entry_name(namespace, key)
        now_ms = to_ms(now)
        fingerprint = compact(fingerprint)
        entry: InFlight | Completed | None = self._in_flight.get(name)
        if entry is None:
            entry = self._completed.get(name)
        verdict = judge(entry, fingerprint, now_ms)
        if verdict is not None:
            return verdict
        self._forget(name)
        self._make_room(now_ms)
        token = self._new_token()
        self._in_flight[name] = InFlight(fingerprint, token, lease_until_ms(now_ms, self._lease_ms, deadline))
        return Proceed(token)

    async def complete(self, namespace: str, key: str, token: str, reply: StoredReply, now: Instant) -> bool:
        name = entry_name(namespace, key)
        until_ms = to_ms(now) + self._ttl_ms
        held = self._in_flight.get(name)
        if held is None or not held_by(held, token):
            return False
        del self._in_flight[name]
        size = reply_size(reply)
        if size > self._max_bytes:
            return False  # too large to keep at all: the key is free again, as after a release
        self._completed[name] = Completed(held.fingerprint, reply, until_ms)
        self._completed_bytes += size
        while self._completed_bytes > self._max_bytes:
            self._drop_completed(next(iter(self._completed)))
        return True

    async def release(self, namespace: str, key: str, token: str) -> bool:
        name = entry_name(namespace, key)
        if not held_by(self._in_flight.get(name), token):
            return False
        del self._in_flight[name]
        return True

    def _make_room(self, now_ms: int) -> None:
        while self._in_flight:
            name, lease = next(iter(self._in_flight.items()))
            if lease.until_ms > now_ms:
                break
            del self._in_flight[name]
        while self._completed:
            name, done = next(iter(self._completed.items()))
            if done.until_ms > now_ms:
                break
            self._drop_completed(name)
        while len(self) >= self._max_entries:
            if not self._completed:
                raise IdempotencyUnavailable(f"all {self._max_entries} idempotency entries are in flight")
            self._drop_completed(next(iter(self._completed)))

    def _forget(self, name: str) -> None:
        self._in_flight.pop(name, None)
        if name in self._completed:
            self._drop_completed(name)

    def _drop_completed(self, name: str) -> None:
        self._completed_bytes -= reply_size(self._completed.pop(name).reply)
