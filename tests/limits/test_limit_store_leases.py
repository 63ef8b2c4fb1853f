"""Leases of the limit stores: a lapsed lease is given back by the organisation's next admit, a settle
ends it, and a reap takes at most a batch; against every adapter (memory, real Redis)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router_impl.limits.store import (
    REAP_BATCH,
    Admitted,
    BucketAdjust,
    CounterAdjust,
    CounterRefused,
    LimitStore,
    LockedOut,
    Snapshot,
)
from tests.harness.limit_plans import DAY_END, T0, Org, bucket, counter, level_of, plan, tokens, used_of

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
