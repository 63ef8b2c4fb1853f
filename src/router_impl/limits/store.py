"""The limit store port: token buckets and budget counters, taken all or nothing in one step.

The limits service turns an organisation's configured limits into an ``AdmitPlan`` (which buckets
to take from, which budget counters to reserve on); a store executes it atomically: either every
bucket has room for its cost and every counter has room for its amount, and all are taken, or
nothing changes and the first refusal is reported. The Redis adapter does it in one Lua script
(one round trip, every key hash-tagged with the organisation, so one Redis Cluster slot); the
embedded adapter does it in process with the same arithmetic, so both pass the same tests.

Buckets hold a float level that refills continuously at ``per_ms`` up to ``capacity``. A bucket
never seen is full. Levels may go negative through ``adjust`` (token buckets charged by estimate
and corrected with actual usage afterwards): a bucket in debt refuses until it refills.

Counters are budget usage of one period (integer tokens or integer micro-dollars), keyed by the
period so a new period starts at zero; they live until ``expires_at_ms``. A counter admits when
``used + amount <= limit``. A refusal with room left (``used < limit``) refuses only that request
(a smaller one may fit). When the counter is spent (``used >= limit``) its refusal also sets the
plan's lockout until the counter's ``expires_at_ms`` (the period's end): the organisation stays
refused, even if refunds later free room, until the period ends, an admin resets it, or its limits
change (which clear the lockout).

Reservations are leased. A plan's ``lease`` records what the admit reserved that a settle or refund
would give back (every counter's amount, every token bucket's cost; a request bucket's 1 is never
given back) under a unique id, due at ``until_ms``. The router that admitted settles (``adjust`` with
the lease) and so ends the lease. When it cannot (it was killed), the lease lapses: every admit of
the organisation first reaps its leases due at or before ``now_ms``, giving their amounts back to the
exact counters and buckets they were taken from (a counter past its period is left alone, so
yesterday's reservation is never refunded into today; usage never below zero, levels never above
capacity). A reap does not touch the lockout: a lockout stands, as after any refund, until the period
ends, an admin resets it or the limits change, so a reap cannot lift one that a refusal set. A settle
whose lease was already reaped applies its deltas plus what the reaping gave back (the full actual
charge), so the totals come out the same either way.

``now_ms`` is the caller's wall clock in Unix milliseconds (replicas compare the same stored
instants; a clock that goes backwards refills nothing). Stores raise ``LimitStoreUnavailable``
when their backing service fails; fail-open or fail-closed is the caller's policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

BucketOwner = Literal["org", "key"]  # whose bucket: the organisation's or one API key's
BucketKind = Literal["requests", "tokens"]
Period = Literal["DAILY", "MONTHLY"]
Unit = Literal["tokens", "micro_usd"]


# Leases one admit reaps at most, oldest deadline first (then by id): bounds an admit's cost after a
# mass failure; the rest go to the following admits.
REAP_BATCH = 256


class LimitStoreUnavailable(RuntimeError):
    """The backing store (Redis) failed or timed out; nothing is known to have been taken."""


@dataclass(frozen=True)
class BucketSpec:
    key: str  # full store key, e.g. "rl:{org-1}:key:key-7:requests"
    capacity: float  # burst size; a new bucket starts full
    per_ms: float  # refill rate, units per millisecond (> 0)
    cost: float  # taken on admit (>= 0)
    owner: BucketOwner
    kind: BucketKind


@dataclass(frozen=True)
class CounterSpec:
    key: str  # full store key, e.g. "budget:{org-1}:DAILY:2026-11-27:tokens"
    limit: int  # >= 0
    amount: int  # reserved on admit (>= 0)
    expires_at_ms: int  # the period's end (Unix ms): the counter and a lockout live until then
    period: Period
    unit: Unit


@dataclass(frozen=True)
class Lease:
    key: str  # the organisation's leases by deadline, e.g. "lease:{org-1}"
    held_key: str  # what each lease holds, by id, e.g. "lease:{org-1}:held"
    id: str  # unique per admit
    until_ms: int  # reaped by the first admit of the organisation at or after this instant (a store on
    # its own clock, Redis TIME, keeps the term: until_ms - the plan's now_ms after its admit)


@dataclass(frozen=True)
class AdmitPlan:
    lockout_key: str  # e.g. "lockout:{org-1}"
    buckets: tuple[BucketSpec, ...]
    counters: tuple[CounterSpec, ...]
    now_ms: int
    # Reap the organisation's lapsed leases first; an admit that holds something records this one.
    lease: Lease | None = None


@dataclass(frozen=True)
class Admitted:
    levels: tuple[float, ...]  # each bucket's level after the take, in plan order
    used: tuple[int, ...]  # each counter's usage after the reservation, in plan order


@dataclass(frozen=True)
class BucketRefused:
    index: int  # the first bucket (plan order) without room for its cost
    level: float  # its level at now_ms (after refill, before any take)


@dataclass(frozen=True)
class CounterRefused:
    index: int  # the first counter (plan order) without room for its amount
    used: int  # its usage at now_ms


@dataclass(frozen=True)
class LockedOut:
    until_ms: int  # when the lockout lapses by itself
    period: Period  # the period of the counter that set it


Decision = Admitted | BucketRefused | CounterRefused | LockedOut


@dataclass(frozen=True)
class BucketAdjust:
    key: str
    capacity: float
    per_ms: float
    delta: float  # added to the refilled level (> 0 gives back, < 0 charges more); capped at capacity
    reserved: float = 0.0  # taken at admit: when the lease was reaped, delta - reserved is added


@dataclass(frozen=True)
class CounterAdjust:
    key: str
    delta: int  # added to usage (settle: actual - reserved; refund: -reserved); usage never below 0
    expires_at_ms: int
    reserved: int = 0  # reserved at admit: when the lease was reaped, delta + reserved is added


@dataclass(frozen=True)
class BucketProbe:
    key: str
    capacity: float
    per_ms: float


@dataclass(frozen=True)
class Snapshot:
    levels: tuple[float, ...]  # refilled to now_ms, in probe order (a bucket never seen is full)
    used: tuple[int, ...]  # per counter key (0 when absent)
    lockout: LockedOut | None


def refilled(level: float, last_ms: int, now_ms: int, capacity: float, per_ms: float) -> float:
    """A bucket's level at ``now_ms``: ``level`` stored at ``last_ms`` plus the refill, capped at capacity.

    Both adapters use exactly these IEEE double operations (the Redis script mirrors them in Lua), so
    they decide alike. A clock that went backwards refills nothing; the stored instant then stays at
    ``max(last_ms, now_ms)`` so that time is not refilled twice when the clock catches up.
    """
    elapsed = max(0, now_ms - last_ms)
    return min(float(capacity), float(level) + elapsed * float(per_ms))


class LimitStore(Protocol):
    async def admit(self, plan: AdmitPlan) -> Decision:
        """Take every bucket's cost and reserve every counter's amount, or nothing (first refusal)."""
        ...

    async def adjust(
        self,
        buckets: tuple[BucketAdjust, ...],
        counters: tuple[CounterAdjust, ...],
        now_ms: int,
        lease: Lease | None = None,
    ) -> None:
        """Settle or refund after the call, atomically, ending ``lease``; never refuses."""
        ...

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        """Current state, changing nothing."""
        ...

    async def clear(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """Delete these keys (buckets, counters, lockouts); returns those that existed."""
        ...

    async def clear_prefix(self, prefix: str) -> tuple[str, ...]:
        """Delete every key starting with ``prefix`` (e.g. all key buckets of one organisation, whose
        key ids the store cannot know otherwise); returns the deleted keys. Admin-rate only: the
        Redis adapter scans."""
        ...
