"""Both limit-store adapters decide alike: the in-process store and real Redis, given the same random
sequence of admits, adjusts and settles, answer and snapshot identically (Hypothesis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketSpec,
    CounterAdjust,
    CounterSpec,
    Decision,
    Lease,
    LimitStore,
    Period,
    Snapshot,
)
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.limit_plans import T0, Org
from tests.harness.services import RedisServer
from tests.limits.test_idempotency_stores import redis_client

# ---------------------------------------------------------------------- both adapters decide alike


@dataclass(frozen=True)
class World:
    """Two buckets (b0 of tokens, leased; b1 of requests) and two counters of one organisation, with
    their fixed shapes."""

    shapes: tuple[tuple[float, float], ...]  # (capacity, per_ms) of each bucket
    counters: tuple[tuple[int, int, Period], ...]  # (limit, expires_at_ms, period) of each counter

    def bucket(self, org: Org, i: int, cost: float) -> BucketSpec:
        return BucketSpec(
            org.bucket(f"b{i}"), *self.shapes[i], cost, "org", "tokens" if i == 0 else "requests"
        )


finite = {"allow_nan": False, "allow_infinity": False}
worlds = st.builds(
    World,
    st.tuples(*[st.tuples(st.floats(0.5, 50, **finite), st.floats(1e-4, 5, **finite))] * 2),
    st.tuples(
        *[st.tuples(st.integers(0, 60), st.integers(T0, T0 + 400), st.sampled_from(["DAILY", "MONTHLY"]))] * 2
    ),
)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("admit"),
            st.integers(0, 40),
            st.lists(
                st.tuples(st.integers(0, 1), st.floats(0, 20, **finite)), max_size=2, unique_by=lambda t: t[0]
            ),
            st.lists(st.tuples(st.integers(0, 1), st.integers(0, 25)), max_size=2, unique_by=lambda t: t[0]),
            # The lease's length, often short enough to lapse before its settle (None: no lease).
            st.integers(0, 48).map(lambda ms: None if ms > 40 else ms),
        ),
        st.tuples(
            st.just("adjust"),
            st.integers(0, 40),
            st.lists(
                st.tuples(st.integers(0, 1), st.floats(-30, 30, **finite)),
                max_size=2,
                unique_by=lambda t: t[0],
            ),
            st.lists(
                st.tuples(st.integers(0, 1), st.integers(-30, 30)), max_size=2, unique_by=lambda t: t[0]
            ),
        ),
        # Settle an admitted leased plan (which one, the actual usage): in time, or after its reaping.
        st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 7), st.integers(0, 30)),
        st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 7), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=25,
)


Step = AdmitPlan | tuple[tuple[BucketAdjust, ...], tuple[CounterAdjust, ...], Lease | None]


def step(world: World, org: Org, op: tuple[object, ...], now: int, leased: list[AdmitPlan]) -> Step:
    """The store call ``op`` makes; a settle takes its plan off ``leased``."""
    kind = op[0]
    if kind == "admit":
        _, _, bucket_ops, counter_ops, lease_ms = op
        assert isinstance(bucket_ops, list) and isinstance(counter_ops, list)
        buckets = tuple(world.bucket(org, i, cost) for i, cost in bucket_ops)
        counters = tuple(
            CounterSpec(org.counter(f"c{j}"), world.counters[j][0], amount, *world.counters[j][1:], "tokens")
            for j, amount in counter_ops
        )
        assert lease_ms is None or isinstance(lease_ms, int)
        lease = None if lease_ms is None else org.lease(now + lease_ms)
        return AdmitPlan(org.lockout, buckets, counters, now, lease)
    if kind == "adjust":
        _, _, bucket_ops, counter_ops = op
        assert isinstance(bucket_ops, list) and isinstance(counter_ops, list)
        return (
            tuple(BucketAdjust(org.bucket(f"b{i}"), *world.shapes[i], delta) for i, delta in bucket_ops),
            tuple(CounterAdjust(org.counter(f"c{j}"), d, world.counters[j][1]) for j, d in counter_ops),
            None,
        )
    _, _, pick, actual = op
    assert isinstance(pick, int) and isinstance(actual, int)
    if not leased:
        return ((), (), None)
    admitted = leased.pop(pick % len(leased))
    return (
        tuple(
            BucketAdjust(b.key, b.capacity, b.per_ms, b.cost - min(float(actual), b.capacity), b.cost)
            for b in admitted.buckets
            if b.kind == "tokens"
        ),
        tuple(CounterAdjust(c.key, actual - c.amount, c.expires_at_ms, c.amount) for c in admitted.counters),
        admitted.lease,
    )


async def run(store: LimitStore, call: Step, now: int) -> Decision | None:
    if isinstance(call, AdmitPlan):
        return await store.admit(call)
    buckets, counters, lease = call
    await store.adjust(buckets, counters, now, lease)
    return None


async def everything(store: LimitStore, org: Org, world: World, now: int) -> Snapshot:
    probes = tuple(BucketProbe(org.bucket(f"b{i}"), *world.shapes[i]) for i in range(2))
    return await store.snapshot(probes, (org.counter("c0"), org.counter("c1")), org.lockout, now)


@pytest.fixture(scope="module")
async def shared_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(redis_server.url)
    yield client
    await client.aclose()


@pytest.mark.services
@settings(max_examples=500)
@given(world=worlds, ops=operations)
async def test_memory_and_redis_give_identical_decisions_and_snapshots(
    shared_client: Redis, world: World, ops: list[tuple[object, ...]]
) -> None:
    await decide_alike(RedisLimitStore(shared_client), world, ops)


async def decide_alike(redis: RedisLimitStore, world: World, ops: list[tuple[object, ...]]) -> None:
    """Every step: the same decision and snapshot from ``redis`` as from the embedded store (also run
    on a Redis Cluster: tests/e2e/test_redis_cluster.py)."""
    org = Org(f"prop-{uuid.uuid4().hex}")
    # The smallest map that holds the world (and its leases): every step sweeps, so eviction is
    # exercised too.
    memory = MemoryLimitStore(max_entries=6)
    now = T0
    leased: list[AdmitPlan] = []
    for op in ops:
        elapsed = op[1]
        assert isinstance(elapsed, int)
        now += elapsed
        call = step(world, org, op, now, leased)
        decision = await run(memory, call, now)
        assert decision == await run(redis, call, now), op
        if (
            isinstance(call, AdmitPlan)
            and call.lease
            and any(p.lease and p.lease.until_ms <= now for p in leased)
        ):
            event("reaps")
        if isinstance(call, AdmitPlan) and isinstance(decision, Admitted) and call.lease is not None:
            leased.append(call)
            event("leased")
        if op[0] == "settle" and isinstance(call, tuple) and call[2] is not None:
            event("settled late" if call[2].until_ms <= now else "settled in time")
        event(type(decision).__name__)
        assert await everything(memory, org, world, now) == await everything(redis, org, world, now), op
