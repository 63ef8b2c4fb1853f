"""The in-process limit store: one worker's token buckets, budget counters and lockouts in one map.

Each method runs without an ``await`` in between, so it is atomic on the event loop, and it reads
everything before it writes anything, so a refusal (or a full map) changes nothing. The arithmetic is
``store.refilled``, the same IEEE double operations as the Redis script, so both adapters decide alike.

Bounded: an entry is idle when dropping it changes no decision (a bucket full again, a counter or a
lockout past its ``expires_at_ms``/``until_ms``). Each write examines a few entries at the front of the
map (least recently written or examined) and drops the idle ones, so idle entries are collected as
traffic flows; ``sweep`` examines a bounded batch more, for a caller that runs it on a timer. Live
entries are never evicted (that would refill a bucket or forget spending): when they alone fill
``max_entries``, writes raise ``LimitStoreUnavailable``.

An organisation's leases are one entry (under ``Lease.key``; ``held_key`` is a Redis detail), idle
once empty. Reaping follows the Redis script step for step (same order, same arithmetic), so both
adapters reap, refund and settle alike.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from router_impl.limits.store import (
    REAP_BATCH,
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    CounterAdjust,
    CounterRefused,
    Decision,
    Lease,
    LimitStoreUnavailable,
    LockedOut,
    Period,
    Snapshot,
    refilled,
)

# About 350 bytes an entry (key string, entry object, map node, measured): the default bounds the map
# near 175 MB, far beyond the live entries of one router's configured organisations and keys.
DEFAULT_MAX_ENTRIES = 500_000
# Entries examined per write: more than a write adds, so idle ones cannot pile up behind live ones.
DEFAULT_SWEEP_STEP = 16
# Entries one ``sweep`` call examines by default: about 10 ms of event-loop time.
DEFAULT_SWEEP_LIMIT = 10_000
# Entries examined, at most, to make room when the map is full; bounded so a map full of live
# entries costs each refused write this much, not a pass over the whole map.
_ROOM_SWEEP = 1024


@dataclass(slots=True)
class _Bucket:
    level: float
    ts_ms: int
    capacity: float  # of the last write: decides when the bucket is full again
    per_ms: float

    def idle(self, now_ms: int) -> bool:
        # A stamp ahead of now (clock went backwards) is kept: the bucket must not refill that span.
        if self.ts_ms > now_ms:
            return False
        return refilled(self.level, self.ts_ms, now_ms, self.capacity, self.per_ms) >= self.capacity


@dataclass(slots=True)
class _Counter:
    used: int
    expires_at_ms: int

    def idle(self, now_ms: int) -> bool:
        return self.expires_at_ms <= now_ms


@dataclass(slots=True)
class _Lockout:
    until_ms: int
    period: Period

    def idle(self, now_ms: int) -> bool:
        return self.until_ms <= now_ms


@dataclass(frozen=True, slots=True)
class _Held:
    """What one lease holds: (key, capacity, per_ms, cost) of each token bucket, (key, amount) of each
    counter, as its admit took them."""

    until_ms: int
    buckets: tuple[tuple[str, float, float, float], ...]
    counters: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class _Leases:
    held: dict[str, _Held]  # by lease id

    def idle(self, now_ms: int) -> bool:
        return not self.held


_Entry = _Bucket | _Counter | _Lockout | _Leases
_E = TypeVar("_E", _Bucket, _Counter, _Lockout, _Leases)


class MemoryLimitStore:
    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, *, sweep_step: int = DEFAULT_SWEEP_STEP
    ) -> None:
        if max_entries < 1 or sweep_step < 0:
            raise ValueError("max_entries must be positive and sweep_step not negative")
        self._max_entries = max_entries
        self._sweep_step = sweep_step
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def admit(self, plan: AdmitPlan) -> Decision:
        now = plan.now_ms
        self._sweep_front(now, self._sweep_step)
        if plan.lease is not None:
            self._reap(plan.lease.key, now)
        lockout = self._live(plan.lockout_key, _Lockout, now)
        if lockout is not None:
            return LockedOut(lockout.until_ms, lockout.period)
        taken: list[tuple[str, _Entry]] = []
        for i, bucket in enumerate(plan.buckets):
            level, ts_ms = self._bucket_at(bucket.key, bucket.capacity, bucket.per_ms, now)
            if level < bucket.cost:
                return BucketRefused(i, level)
            after = _Bucket(level - float(bucket.cost), ts_ms, float(bucket.capacity), float(bucket.per_ms))
            taken.append((bucket.key, after))
        for j, counter in enumerate(plan.counters):
            used = self._used(counter.key, now)
            if used + counter.amount > counter.limit:
                if used >= counter.limit:  # spent: the organisation is out until the period ends
                    self._write(now, [(plan.lockout_key, _Lockout(counter.expires_at_ms, counter.period))])
                return CounterRefused(j, used)
            taken.append((counter.key, _Counter(used + counter.amount, counter.expires_at_ms)))
        held = _held(plan)
        leases: _Leases | None = None
        if plan.lease is not None and held is not None:
            leases = self._live(plan.lease.key, _Leases, now) or _Leases({})
            taken.append((plan.lease.key, leases))
        self._write(now, taken)
        if leases is not None and plan.lease is not None and held is not None:
            leases.held[plan.lease.id] = held
        levels = tuple(e.level for _, e in taken if isinstance(e, _Bucket))
        return Admitted(levels, tuple(e.used for _, e in taken if isinstance(e, _Counter)))

    async def adjust(
        self,
        buckets: tuple[BucketAdjust, ...],
        counters: tuple[CounterAdjust, ...],
        now_ms: int,
        lease: Lease | None = None,
    ) -> None:
        if not buckets and not counters:
            return  # as the Redis adapter: nothing to settle, and no lease was recorded for nothing
        self._sweep_front(now_ms, self._sweep_step)
        leases = None if lease is None else self._live(lease.key, _Leases, now_ms)
        # Reaped already: the reservation was given back, so the actual figures are charged in full.
        late = lease is not None and (leases is None or lease.id not in leases.held)
        changed: list[tuple[str, _Entry]] = []
        for bucket in buckets:
            level, ts_ms = self._bucket_at(bucket.key, bucket.capacity, bucket.per_ms, now_ms)
            delta = float(bucket.delta) - float(bucket.reserved) if late else float(bucket.delta)
            level = min(float(bucket.capacity), level + delta)
            changed.append((bucket.key, _Bucket(level, ts_ms, float(bucket.capacity), float(bucket.per_ms))))
        for counter in counters:
            delta = counter.delta + counter.reserved if late else counter.delta
            used = max(0, self._used(counter.key, now_ms) + delta)
            changed.append((counter.key, _Counter(used, counter.expires_at_ms)))
        self._write(now_ms, changed)
        if leases is not None and lease is not None and not late:
            del leases.held[lease.id]

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        lockout = self._live(lockout_key, _Lockout, now_ms)
        return Snapshot(
            levels=tuple(self._bucket_at(b.key, b.capacity, b.per_ms, now_ms)[0] for b in buckets),
            used=tuple(self._used(key, now_ms) for key in counter_keys),
            lockout=None if lockout is None else LockedOut(lockout.until_ms, lockout.period),
        )

    async def clear(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """Keys present in the map count as existing, even when idle (as Redis has not expired them yet)."""
        return tuple(key for key in keys if self._entries.pop(key, None) is not None)

    async def clear_prefix(self, prefix: str) -> tuple[str, ...]:
        if not prefix:
            raise ValueError("an empty prefix would clear every limit")
        return await self.clear(tuple(key for key in self._entries if key.startswith(prefix)))

    def sweep(self, now_ms: int, limit: int = DEFAULT_SWEEP_LIMIT) -> int:
        """Examine up to ``limit`` entries, oldest first, and drop the idle ones; returns how many were
        dropped. Bounded (about 1 us an entry) so a timer can call it without stalling the event loop;
        successive calls go round the whole map."""
        return self._sweep_front(now_ms, limit)

    def _reap(self, key: str, now_ms: int) -> None:
        """Give back what the leases due by ``now_ms`` hold (at most ``REAP_BATCH``), then drop them."""
        leases = self._live(key, _Leases, now_ms)
        if leases is None:
            return
        due = sorted(
            (held.until_ms, lease_id) for lease_id, held in leases.held.items() if held.until_ms <= now_ms
        )
        del due[REAP_BATCH:]
        if not due:
            return
        buckets: dict[str, _Bucket] = {}
        counters: dict[str, _Counter | None] = {}  # None: past its period, left alone
        for _, lease_id in due:
            held = leases.held[lease_id]
            for bucket_key, capacity, per_ms, cost in held.buckets:
                bucket = buckets.get(bucket_key)
                if bucket is None:
                    level, ts_ms = self._bucket_at(bucket_key, capacity, per_ms, now_ms)
                    bucket = buckets[bucket_key] = _Bucket(level, ts_ms, capacity, per_ms)
                bucket.level = min(capacity, bucket.level + cost)
                bucket.capacity, bucket.per_ms = capacity, per_ms
            for counter_key, amount in held.counters:
                if counter_key not in counters:
                    stored = self._live(counter_key, _Counter, now_ms)
                    counters[counter_key] = (
                        None if stored is None else _Counter(stored.used, stored.expires_at_ms)
                    )
                counter = counters[counter_key]
                if counter is not None:
                    counter.used = max(0, counter.used - amount)
        changes: list[tuple[str, _Entry]] = [*buckets.items()]
        changes += [(k, c) for k, c in counters.items() if c is not None]
        self._write(now_ms, changes)
        for _, lease_id in due:
            del leases.held[lease_id]

    def _bucket_at(self, key: str, capacity: float, per_ms: float, now_ms: int) -> tuple[float, int]:
        """The bucket's level at ``now_ms`` and the stamp to store with it (never earlier than stored)."""
        stored = self._live(key, _Bucket, now_ms)
        if stored is None:
            return float(capacity), now_ms
        level = refilled(stored.level, stored.ts_ms, now_ms, capacity, per_ms)
        return level, max(stored.ts_ms, now_ms)

    def _used(self, key: str, now_ms: int) -> int:
        stored = self._live(key, _Counter, now_ms)
        return 0 if stored is None else stored.used

    def _live(self, key: str, kind: type[_E], now_ms: int) -> _E | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not isinstance(entry, kind):
            raise LimitStoreUnavailable(f"limit store key {key!r} holds a {type(entry).__name__[1:].lower()}")
        # A full bucket is returned as it is: refilled() already reads it as full, like an absent one.
        return None if isinstance(entry, _Counter | _Lockout) and entry.idle(now_ms) else entry

    def _write(self, now_ms: int, changes: list[tuple[str, _Entry]]) -> None:
        """Store every change, or none when live entries leave no room for the new keys."""
        entries = self._entries
        new = len({key for key, _ in changes if key not in entries})
        if len(entries) + new > self._max_entries:
            self._sweep_front(now_ms, _ROOM_SWEEP)
            new = len({key for key, _ in changes if key not in entries})
            if len(entries) + new > self._max_entries:
                raise LimitStoreUnavailable(f"all {self._max_entries} limit store entries are live")
        for key, entry in changes:
            entries[key] = entry
            entries.move_to_end(key)

    def _sweep_front(self, now_ms: int, count: int) -> int:
        """Examine ``count`` entries at the front: drop the idle ones, move the live ones to the back."""
        entries = self._entries
        dropped = 0
        for _ in range(min(count, len(entries))):
            key, entry = entries.popitem(last=False)
            if entry.idle(now_ms):
                dropped += 1
            else:
                entries[key] = entry
        return dropped


def _held(plan: AdmitPlan) -> _Held | None:
    """What the plan's lease holds (what a refund gives back), or None when nothing."""
    if plan.lease is None:
        return None
    buckets = tuple(
        (b.key, float(b.capacity), float(b.per_ms), float(b.cost)) for b in plan.buckets if b.kind == "tokens"
    )
    counters = tuple((c.key, c.amount) for c in plan.counters)
    if not buckets and not counters:
        return None
    return _Held(plan.lease.until_ms, buckets, counters)
