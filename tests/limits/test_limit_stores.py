"""Token buckets, budget counters and lockouts, run against every limit store adapter: memory, real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from router_impl.limits.store import (
    REAP_BATCH,
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    BucketSpec,
    CounterAdjust,
    CounterRefused,
    CounterSpec,
    Decision,
    Lease,
    LimitStore,
    LimitStoreUnavailable,
    LockedOut,
    Period,
    Snapshot,
    refilled,
)
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.services import RedisServer
from tests.limits.test_idempotency_stores import redis_client

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


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield MemoryLimitStore()
    else:
        client = redis_client(request.getfixturevalue("redis_server").url)
        yield RedisLimitStore(client)
        await client.aclose()


@pytest.fixture
def org() -> Org:
    return Org(f"org-{uuid.uuid4().hex}")


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


# ---------------------------------------------------------------------- buckets


async def test_a_bucket_never_seen_is_full(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=0.0, capacity=7.0)
    assert await level_of(store, spec, T0) == 7.0
    assert await store.admit(plan(org, T0, (spec,))) == Admitted((7.0,), ())


async def test_taking_until_empty_then_the_refusal_reports_the_level(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), capacity=3.0, per_ms=1e-9)
    for left in (2.0, 1.0, 0.0):
        assert await store.admit(plan(org, T0, (spec,))) == Admitted((left,), ())
    assert await store.admit(plan(org, T0, (spec,))) == BucketRefused(0, 0.0)
    half_empty = bucket(org.bucket("org:tokens"), cost=2.5, capacity=3.0, per_ms=1e-9)
    assert await store.admit(plan(org, T0, (half_empty,))) == Admitted((0.5,), ())
    assert await store.admit(plan(org, T0, (half_empty,))) == BucketRefused(0, 0.5)


async def test_a_bucket_refills_continuously_up_to_its_capacity(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=10.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0, (spec,))) == Admitted((0.0,), ())
    assert await level_of(store, spec, T0 + 3) == 1.5
    one = bucket(org.bucket(), cost=1.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0 + 1, (one,))) == BucketRefused(0, 0.5)
    assert await store.admit(plan(org, T0 + 2, (one,))) == Admitted((0.0,), ())
    assert await level_of(store, spec, T0 + 1_000_000) == 10.0


async def test_a_clock_going_backwards_refills_nothing(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=10.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0 + 100, (spec,))) == Admitted((0.0,), ())
    one = bucket(org.bucket(), cost=1.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0 + 50, (one,))) == BucketRefused(0, 0.0)
    assert await level_of(store, spec, T0) == 0.0
    free = bucket(org.bucket(), cost=0.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0 + 60, (free,))) == Admitted((0.0,), ())
    await store.adjust((BucketAdjust(spec.key, 10.0, 0.5, 0.0),), (), T0 + 70)
    # Writes made while the clock was behind keep the later instant: the refill restarts where the
    # clock had been (T0 + 100), not where it went back to.
    assert await store.admit(plan(org, T0 + 102, (one,))) == Admitted((0.0,), ())


# ---------------------------------------------------------------------- all or nothing


async def test_a_refusing_second_bucket_takes_nothing_from_the_first(store: LimitStore, org: Org) -> None:
    first = bucket(org.bucket("org:requests"), cost=1.0, per_ms=1e-9)
    second = bucket(org.bucket("key:k1:requests"), cost=10.0, per_ms=1e-9)
    assert await store.admit(plan(org, T0, (second,))) == Admitted((0.0,), ())
    assert await store.admit(plan(org, T0, (first, second))) == BucketRefused(1, 0.0)
    assert await level_of(store, first, T0) == 10.0


async def test_a_refusing_counter_takes_no_bucket_and_reserves_on_no_other_counter(
    store: LimitStore, org: Org
) -> None:
    spec = bucket(org.bucket(), cost=4.0, per_ms=1e-9)
    roomy = counter(org.counter("DAILY:micro_usd"), amount=5, limit=1000)
    tight = counter(org.counter("DAILY:tokens"), amount=101, limit=100)
    decision = await store.admit(plan(org, T0, (spec,), (roomy, tight)))
    assert decision == CounterRefused(1, 0)
    assert await level_of(store, spec, T0) == 10.0
    assert await used_of(store, roomy.key) == 0
    assert await used_of(store, tight.key) == 0


async def test_a_counter_admits_up_to_its_limit_exactly(store: LimitStore, org: Org) -> None:
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 60),))) == Admitted((), (60,))
    other_lockout = AdmitPlan(f"lockout:{{{org.tag}}}:probe", (), (counter(key, 41),), T0)
    assert await store.admit(other_lockout) == CounterRefused(0, 60)
    assert await store.admit(plan(org, T0, (), (counter(key, 40),))) == Admitted((), (100,))
    assert await store.admit(plan(org, T0, (), (counter(key, 1),))) == CounterRefused(0, 100)
    assert await used_of(store, key) == 100


async def test_buckets_then_counters_are_taken_together_in_plan_order(store: LimitStore, org: Org) -> None:
    specs = (bucket(org.bucket("a"), cost=1.5), bucket(org.bucket("b"), cost=2.0, capacity=4.0))
    counters = (counter(org.counter("DAILY:tokens"), 7), counter(org.counter("MONTHLY:tokens"), 3, limit=10))
    assert await store.admit(plan(org, T0, specs, counters)) == Admitted((8.5, 2.0), (7, 3))
    assert await store.admit(plan(org, T0, specs, counters)) == Admitted((7.0, 0.0), (14, 6))


# ---------------------------------------------------------------------- lockout


async def test_a_counter_refusal_locks_the_organisation_out_until_the_period_ends(
    store: LimitStore, org: Org
) -> None:
    key = org.counter("MONTHLY:tokens")
    spent = counter(key, 100, expires_at_ms=T0 + 5_000, period="MONTHLY")
    assert await store.admit(plan(org, T0, (), (spent,))) == Admitted((), (100,))
    assert await store.admit(
        plan(org, T0, (), (counter(key, 1, expires_at_ms=T0 + 5_000, period="MONTHLY"),))
    ) == (CounterRefused(0, 100))
    locked = LockedOut(T0 + 5_000, "MONTHLY")
    # Even a plan with only a bucket, even after a refund frees room, until the period ends.
    assert await store.admit(plan(org, T0 + 1, (bucket(org.bucket()),))) == locked
    await store.adjust((), (CounterAdjust(key, -100, T0 + 5_000),), T0 + 2)
    assert (
        await store.admit(plan(org, T0 + 4_999, (), (counter(key, 1, expires_at_ms=T0 + 5_000),))) == locked
    )
    seen = await store.snapshot((), (key,), org.lockout, T0 + 4_999)
    assert seen == Snapshot((), (0,), locked)
    # At the period's end the lockout lapses by itself (and the old period's counter with it).
    assert (await store.snapshot((), (), org.lockout, T0 + 5_000)).lockout is None
    fresh = counter(key, 1, expires_at_ms=T0 + 10_000)
    assert await store.admit(plan(org, T0 + 5_000, (bucket(org.bucket()),), (fresh,))) == Admitted(
        (9.0,), (1,)
    )


async def test_a_refusal_with_room_left_refuses_only_that_request(store: LimitStore, org: Org) -> None:
    """Issue 17.7: 985 of 1,000 left, a request reserving 4,111 is refused, a smaller one still fits."""
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 15, limit=1_000),))) == Admitted((), (15,))
    assert await store.admit(plan(org, T0, (), (counter(key, 4_111, limit=1_000),))) == CounterRefused(0, 15)
    assert (await store.snapshot((), (key,), org.lockout, T0)).lockout is None
    assert await store.admit(plan(org, T0, (), (counter(key, 985, limit=1_000),))) == Admitted((), (1_000,))
    # Now it is spent: the next refusal locks the organisation out until the period ends.
    assert await store.admit(plan(org, T0, (), (counter(key, 1, limit=1_000),))) == CounterRefused(0, 1_000)
    assert await store.admit(plan(org, T0, (), (counter(key, 0, limit=1_000),))) == LockedOut(
        DAY_END, "DAILY"
    )


async def test_a_cleared_lockout_admits_again(store: LimitStore, org: Org) -> None:
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 10, limit=10),))) == Admitted((), (10,))
    assert await store.admit(plan(org, T0, (), (counter(key, 1, limit=10),))) == CounterRefused(0, 10)
    assert await store.admit(plan(org, T0, (), (counter(key, 1, limit=10),))) == LockedOut(DAY_END, "DAILY")
    assert await store.clear((org.lockout,)) == (org.lockout,)
    await store.adjust((), (CounterAdjust(key, -10, DAY_END),), T0)
    assert await store.admit(plan(org, T0, (), (counter(key, 1, limit=10),))) == Admitted((), (1,))


# ---------------------------------------------------------------------- adjust


async def test_adjust_gives_back_at_most_up_to_capacity(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=5.0, per_ms=1e-9)
    assert await store.admit(plan(org, T0, (spec,))) == Admitted((5.0,), ())
    await store.adjust((BucketAdjust(spec.key, 10.0, 1e-9, 2.5),), (), T0)
    assert await level_of(store, spec, T0) == 7.5
    await store.adjust((BucketAdjust(spec.key, 10.0, 1e-9, 100.0),), (), T0)
    assert await level_of(store, spec, T0) == 10.0


async def test_a_bucket_charged_into_debt_refuses_until_it_refills(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=1.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0, (spec,))) == Admitted((9.0,), ())
    await store.adjust((BucketAdjust(spec.key, 10.0, 0.5, -14.0),), (), T0)
    assert await level_of(store, spec, T0) == -5.0
    assert await store.admit(plan(org, T0 + 10, (spec,))) == BucketRefused(0, 0.0)
    assert await store.admit(plan(org, T0 + 12, (spec,))) == Admitted((0.0,), ())


async def test_adjust_on_a_bucket_never_seen_starts_from_full(store: LimitStore, org: Org) -> None:
    await store.adjust((BucketAdjust(org.bucket(), 10.0, 0.5, -3.0),), (), T0)
    assert await level_of(store, bucket(org.bucket()), T0) == 7.0


async def test_counter_adjust_settles_refunds_and_never_goes_below_zero(store: LimitStore, org: Org) -> None:
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 30),))) == Admitted((), (30,))
    await store.adjust((), (CounterAdjust(key, 12, DAY_END),), T0)
    assert await used_of(store, key) == 42
    await store.adjust((), (CounterAdjust(key, -100, DAY_END),), T0)
    assert await used_of(store, key) == 0
    await store.adjust((), (CounterAdjust(org.counter("MONTHLY:tokens"), 5, DAY_END),), T0)
    assert await used_of(store, org.counter("MONTHLY:tokens")) == 5


async def test_a_counter_is_forgotten_at_its_expiry(store: LimitStore, org: Org) -> None:
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 30, expires_at_ms=T0 + 10),))) == Admitted(
        (), (30,)
    )
    assert await used_of(store, key, T0 + 9) == 30
    assert await used_of(store, key, T0 + 10) == 0
    assert await store.admit(plan(org, T0 + 10, (), (counter(key, 5, expires_at_ms=T0 + 20),))) == (
        Admitted((), (5,))
    )


# ---------------------------------------------------------------------- leases


async def test_a_lapsed_lease_is_given_back_by_the_organisations_next_admit(
    store: LimitStore, org: Org
) -> None:
    spend = (tokens(org.bucket("org:tokens"), 40.0), bucket(org.bucket(), per_ms=1e-9))
    budget = (counter(org.counter(), 30), counter(org.counter("MONTHLY:tokens"), 30, limit=1000))
    leased = org.lease(T0 + 100)
    assert await store.admit(plan(org, T0, spend, budget, leased)) == Admitted((60.0, 9.0), (30, 30))
    nothing = plan(org, T0 + 99, (), (), org.lease(T0 + 200))
    assert await store.admit(nothing) == Admitted((), ())
    assert await used_of(store, org.counter(), T0 + 99) == 30
    assert await store.admit(replace(nothing, now_ms=T0 + 100)) == Admitted((), ())
    assert await used_of(store, org.counter(), T0 + 100) == 0
    assert await used_of(store, org.counter("MONTHLY:tokens"), T0 + 100) == 0
    assert await level_of(store, spend[0], T0 + 100) == pytest.approx(100.0)
    assert await level_of(store, spend[1], T0 + 100) < 9.5  # a request bucket's 1 is never given back
    # Reaped once: a settle now charges the actual usage in full, and nothing is given back twice.
    await store.adjust((), (CounterAdjust(org.counter(), 12 - 30, DAY_END, 30),), T0 + 101, leased)
    assert await store.admit(replace(nothing, now_ms=T0 + 300)) == Admitted((), ())
    assert await used_of(store, org.counter(), T0 + 300) == 12


async def test_a_settle_within_the_lease_ends_it(store: LimitStore, org: Org) -> None:
    spend, budget, leased = (
        (tokens(org.bucket("org:tokens"), 40.0),),
        (counter(org.counter(), 30),),
        org.lease(T0 + 10),
    )
    assert await store.admit(plan(org, T0, spend, budget, leased)) == Admitted((60.0,), (30,))
    await store.adjust(
        (BucketAdjust(spend[0].key, 100.0, 1e-9, 40.0 - 25.0, 40.0),),
        (CounterAdjust(org.counter(), 25 - 30, DAY_END, 30),),
        T0 + 5,
        leased,
    )
    assert await store.admit(plan(org, T0 + 10, (), (), org.lease(T0 + 20))) == Admitted((), ())
    assert await used_of(store, org.counter(), T0 + 10) == 25
    assert await level_of(store, spend[0], T0 + 10) == pytest.approx(75.0)


async def test_a_late_settle_and_a_late_refund_count_the_actual_usage_once(
    store: LimitStore, org: Org
) -> None:
    spend, budget = (tokens(org.bucket("org:tokens"), 40.0),), (counter(org.counter(), 30),)
    settled, refunded = org.lease(T0 + 10), org.lease(T0 + 10)
    assert await store.admit(plan(org, T0, spend, budget, settled)) == Admitted((60.0,), (30,))
    assert await store.admit(plan(org, T0, spend, budget, refunded)) == Admitted((20.0,), (60,))
    assert await store.admit(plan(org, T0 + 10, (), (), org.lease(T0 + 20))) == Admitted((), ())
    assert await used_of(store, org.counter(), T0 + 10) == 0
    await store.adjust(
        (BucketAdjust(spend[0].key, 100.0, 1e-9, 40.0 - 25.0, 40.0),),
        (CounterAdjust(org.counter(), 25 - 30, DAY_END, 30),),
        T0 + 11,
        settled,
    )
    await store.adjust(
        (BucketAdjust(spend[0].key, 100.0, 1e-9, 40.0, 40.0),),
        (CounterAdjust(org.counter(), -30, DAY_END, 30),),
        T0 + 11,
        refunded,
    )
    assert await used_of(store, org.counter(), T0 + 11) == 25
    assert await level_of(store, spend[0], T0 + 11) == pytest.approx(75.0)


async def test_a_reap_leaves_a_counter_of_a_past_period_alone(store: LimitStore, org: Org) -> None:
    yesterday, today = org.counter("DAILY:d1:tokens"), org.counter("DAILY:d2:tokens")
    leased = org.lease(T0 + 1_000)
    assert await store.admit(
        plan(org, T0, (), (counter(yesterday, 30, expires_at_ms=T0 + 500),), leased)
    ) == (Admitted((), (30,)))
    fresh = counter(today, 5, expires_at_ms=T0 + 90_000)
    assert await store.admit(plan(org, T0 + 600, (), (fresh,), org.lease(T0 + 5_000))) == Admitted((), (5,))
    assert await store.admit(plan(org, T0 + 1_000, (), (fresh,), org.lease(T0 + 5_000))) == Admitted(
        (), (10,)
    )
    assert await used_of(store, today, T0 + 1_000) == 10
    assert await used_of(store, yesterday, T0 + 1_000) == 0


async def test_a_reap_does_not_lift_a_lockout(store: LimitStore, org: Org) -> None:
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 100),), org.lease(T0 + 10))) == Admitted(
        (), (100,)
    )
    assert await store.admit(plan(org, T0 + 1, (), (counter(key, 1),), org.lease(T0 + 11))) == CounterRefused(
        0, 100
    )
    locked = LockedOut(DAY_END, "DAILY")
    assert await store.admit(plan(org, T0 + 10, (), (counter(key, 1),), org.lease(T0 + 20))) == locked
    assert await store.snapshot((), (key,), org.lockout, T0 + 10) == Snapshot((), (0,), locked)  # reaped


async def test_one_admit_reaps_at_most_a_batch_of_leases_oldest_first(store: LimitStore, org: Org) -> None:
    key = org.counter()
    for i in range(REAP_BATCH + 4):
        leased = org.lease(T0 + 10 + i, f"lease-{i:04d}")
        assert await store.admit(plan(org, T0, (), (counter(key, 1, limit=10_000),), leased)) == Admitted(
            (), (i + 1,)
        )
    reaper = plan(org, T0 + 10_000, (), (), org.lease(T0 + 20_000))
    assert await store.admit(reaper) == Admitted((), ())
    assert await used_of(store, key, T0 + 10_000) == 4
    assert await store.admit(reaper) == Admitted((), ())
    assert await used_of(store, key, T0 + 10_000) == 0


# ---------------------------------------------------------------------- snapshot and clear


async def test_a_snapshot_changes_nothing(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=10.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0, (spec,))) == Admitted((0.0,), ())
    probes = (BucketProbe(spec.key, 10.0, 0.5), BucketProbe(org.bucket("never"), 4.0, 0.5))
    later = await store.snapshot(probes, (org.counter(),), org.lockout, T0 + 10)
    assert later == Snapshot((5.0, 4.0), (0,), None)
    assert await store.snapshot(probes, (org.counter(),), org.lockout, T0 + 10) == later
    # Had the snapshot stored its refill at T0 + 10, this earlier take would find 5, not 2.
    two = bucket(spec.key, cost=2.0, capacity=10.0, per_ms=0.5)
    assert await store.admit(plan(org, T0 + 4, (two,))) == Admitted((0.0,), ())
    assert await store.clear((org.bucket("never"), org.counter(), org.lockout)) == ()


async def test_clear_returns_the_keys_that_existed_and_resets_them(store: LimitStore, org: Org) -> None:
    spec = bucket(org.bucket(), cost=4.0)
    key = org.counter()
    assert await store.admit(plan(org, T0, (spec,), (counter(key, 100),))) == Admitted((6.0,), (100,))
    assert await store.admit(plan(org, T0, (), (counter(key, 1),))) == CounterRefused(0, 100)
    cleared = await store.clear((spec.key, org.bucket("never"), key, org.lockout))
    assert cleared == (spec.key, key, org.lockout)
    assert await store.snapshot((BucketProbe(spec.key, 10.0, 0.5),), (key,), org.lockout, T0) == Snapshot(
        (10.0,), (0,), None
    )
    assert await store.clear((spec.key, key, org.lockout)) == ()


async def test_clear_prefix_removes_only_the_keys_under_it(store: LimitStore, org: Org) -> None:
    keys = (org.bucket("key:k1:requests"), org.bucket("key:k2:tokens"), org.bucket("org:requests"))
    assert await store.admit(plan(org, T0, tuple(bucket(k) for k in keys))) == Admitted((9.0, 9.0, 9.0), ())
    cleared = await store.clear_prefix(org.bucket("key:"))
    assert sorted(cleared) == sorted(keys[:2])
    assert await level_of(store, bucket(keys[2]), T0) == 9.0
    assert await level_of(store, bucket(keys[0]), T0) == 10.0
    assert await store.clear_prefix(org.bucket("key:")) == ()
    with pytest.raises(ValueError, match="empty prefix"):
        await store.clear_prefix("")


async def test_a_key_holding_another_kind_of_entry_is_unavailable_and_nothing_is_taken(
    store: LimitStore, org: Org
) -> None:
    confused = org.counter("confused")
    assert await store.admit(plan(org, T0, (), (counter(confused, 7),))) == Admitted((), (7,))
    spec = bucket(org.bucket(), cost=3.0)
    with pytest.raises(LimitStoreUnavailable):
        await store.admit(plan(org, T0, (spec, bucket(confused))))
    assert await level_of(store, spec, T0) == 10.0
    assert await used_of(store, confused) == 7


# ---------------------------------------------------------------------- the refill arithmetic


def test_refill_is_linear_capped_and_ignores_a_clock_going_backwards() -> None:
    assert refilled(-2.0, 1000, 1010, 10.0, 0.5) == 3.0
    assert refilled(9.0, 1000, 1010, 10.0, 0.5) == 10.0
    assert refilled(1.0, 1000, 900, 10.0, 0.5) == 1.0
    assert refilled(1.0, 1000, 1000, 10.0, 0.5) == 1.0
    assert type(refilled(1, 0, 100, 10, 1)) is float


# ---------------------------------------------------------------------- the embedded store's bounds


@pytest.mark.parametrize(("max_entries", "sweep_step"), [(1000, 2), (3, 0)])
async def test_memory_store_collects_idle_entries_as_traffic_flows(
    org: Org, max_entries: int, sweep_step: int
) -> None:
    store = MemoryLimitStore(max_entries=max_entries, sweep_step=sweep_step)
    for i in range(50):  # each bucket is full again 2 ms after its take
        spec = bucket(org.bucket(f"key:k{i}:requests"), cost=1.0, per_ms=0.5)
        assert await store.admit(plan(org, T0 + 10 * i, (spec,))) == Admitted((9.0,), ())
    assert len(store) <= 3
    spent = counter(org.counter(), 1, expires_at_ms=T0 + 600)
    assert await store.admit(plan(org, T0 + 500, (), (spent,))) == Admitted((), (1,))
    assert store.sweep(T0 + 600) >= 1
    assert await used_of(store, org.counter(), T0 + 599) == 0  # swept: gone (it had expired by T0+600)


async def test_memory_sweep_examines_a_bounded_batch_and_goes_round_the_map(org: Org) -> None:
    store = MemoryLimitStore(sweep_step=0)
    slow = bucket(org.bucket("slow"), per_ms=1e-9)
    quick = tuple(bucket(org.bucket(f"quick{i}"), per_ms=0.5) for i in range(4))  # full at T0 + 2
    assert await store.admit(plan(org, T0, (slow, *quick))) == Admitted((9.0,) * 5, ())
    assert store.sweep(T0 + 2, limit=3) == 2
    assert len(store) == 3
    assert store.sweep(T0 + 2, limit=3) == 2
    assert len(store) == 1
    assert await level_of(store, slow, T0) == 9.0


async def test_memory_store_full_of_live_entries_refuses_and_takes_nothing(org: Org) -> None:
    store = MemoryLimitStore(max_entries=2)
    slow = (bucket(org.bucket("a"), per_ms=1e-9), bucket(org.bucket("b"), per_ms=1e-9))
    assert await store.admit(plan(org, T0, slow)) == Admitted((9.0, 9.0), ())
    third = bucket(org.bucket("c"), per_ms=1e-9)
    with pytest.raises(LimitStoreUnavailable, match="live"):
        await store.admit(plan(org, T0, (slow[0], third)))
    assert await level_of(store, slow[0], T0) == 9.0
    assert await store.admit(plan(org, T0, slow)) == Admitted((8.0, 8.0), ())  # known keys still work
    assert await store.clear((org.bucket("a"),)) == (org.bucket("a"),)
    assert await store.admit(plan(org, T0, (third,))) == Admitted((9.0,), ())


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
