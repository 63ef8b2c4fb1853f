"""Token buckets, budget counters and lockouts, run against every limit store adapter: memory, real Redis
(the ``store`` fixture of tests/limits/conftest.py)."""

from __future__ import annotations

import pytest

from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    CounterAdjust,
    CounterRefused,
    LimitStore,
    LimitStoreUnavailable,
    LockedOut,
    Snapshot,
    refilled,
)
from tests.harness.limit_plans import DAY_END, T0, Org, bucket, counter, level_of, plan, used_of

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
