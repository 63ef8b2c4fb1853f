"""Limit-store plans for tests: one organisation's keys under a fresh hash tag, bucket and counter
specs, admit plans, and the level or usage a store reports for a key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from router_impl.limits.store import (
    AdmitPlan,
    BucketProbe,
    BucketSpec,
    CounterSpec,
    Lease,
    LimitStore,
    Period,
)

# Far in the future of the Redis server's own clock, so Redis never expires a key these tests judge
# by their explicit now_ms: what lapses, lapses by the stores' reading of now_ms.
T0 = 4_000_000_000_000
DAY_END = T0 + 86_400_000


@dataclass(frozen=True)
class Org:
    """One organisation's keys, under a fresh hash tag so tests never share state in Redis."""

    tag: str

    def bucket(self, name: str = "org:requests") -> str:
        return f"rl:{{{self.tag}}}:{name}"

    def counter(self, name: str = "DAILY:tokens") -> str:
        return f"budget:{{{self.tag}}}:{name}"

    @property
    def lockout(self) -> str:
        return f"lockout:{{{self.tag}}}"

    def lease(self, until_ms: int, lease_id: str = "") -> Lease:
        return Lease(
            f"lease:{{{self.tag}}}", f"lease:{{{self.tag}}}:held", lease_id or uuid.uuid4().hex, until_ms
        )


def bucket(key: str, cost: float = 1.0, capacity: float = 10.0, per_ms: float = 0.5) -> BucketSpec:
    return BucketSpec(key, capacity, per_ms, cost, "org", "requests")


def counter(
    key: str, amount: int, limit: int = 100, expires_at_ms: int = DAY_END, period: Period = "DAILY"
) -> CounterSpec:
    return CounterSpec(key, limit, amount, expires_at_ms, period, "tokens")


def plan(
    org: Org,
    now_ms: int,
    buckets: tuple[BucketSpec, ...] = (),
    counters: tuple[CounterSpec, ...] = (),
    lease: Lease | None = None,
) -> AdmitPlan:
    return AdmitPlan(org.lockout, buckets, counters, now_ms, lease)


def tokens(key: str, cost: float, capacity: float = 100.0, per_ms: float = 1e-9) -> BucketSpec:
    return BucketSpec(key, capacity, per_ms, cost, "org", "tokens")


async def level_of(store: LimitStore, spec: BucketSpec, now_ms: int) -> float:
    seen = await store.snapshot(
        (BucketProbe(spec.key, spec.capacity, spec.per_ms),), (), "lockout:{none}", now_ms
    )
    return seen.levels[0]


async def used_of(store: LimitStore, key: str, now_ms: int = T0) -> int:
    return (await store.snapshot((), (key,), "lockout:{none}", now_ms)).used[0]
