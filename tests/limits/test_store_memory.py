"""The in-process limit store's own rules: a lapsed lease gives back exactly what it took (never a
refill to full), and the memory bound admits a map exactly full, refuses one entry more, and sweeps
only when a write would not fit."""

from __future__ import annotations

import pytest

from router_impl.limits.store import Admitted, BucketAdjust, BucketSpec, CounterAdjust, LimitStoreUnavailable
from router_impl.limits.store_memory import MemoryLimitStore
from tests.harness.limit_plans import T0, Org, bucket, counter, level_of, plan, tokens, used_of


@pytest.fixture
def org() -> Org:
    return Org("org-memory")


async def test_a_lapsed_lease_gives_back_its_tokens_and_no_more(org: Org) -> None:
    store = MemoryLimitStore()
    spend = tokens(org.bucket("org:tokens"), 40.0)
    assert await store.admit(plan(org, T0, (spend,), (), org.lease(T0 + 10))) == Admitted((60.0,), ())
    other = tokens(org.bucket("org:tokens"), 30.0)
    assert await store.admit(plan(org, T0 + 1, (other,))) == Admitted((pytest.approx(30.0),), ())
    assert await store.admit(plan(org, T0 + 10, (), (), org.lease(T0 + 20))) == Admitted((), ())
    # The lapsed lease's 40 come back; the other 30 stay spent: not a refill to the capacity.
    assert await level_of(store, spend, T0 + 10) == pytest.approx(70.0)


async def test_two_lapsed_leases_on_one_bucket_give_back_both_up_to_the_capacity(org: Org) -> None:
    store = MemoryLimitStore()
    key = org.bucket("org:tokens")
    for i, cost in enumerate((20.0, 30.0)):
        leased = plan(org, T0, (tokens(key, cost),), (), org.lease(T0 + 10, f"lease-{i}"))
        assert (await store.admit(leased)).__class__ is Admitted
    unleased = tokens(key, 10.0)
    assert await store.admit(plan(org, T0, (unleased,))) == Admitted((pytest.approx(40.0),), ())
    assert await store.admit(plan(org, T0 + 10, (), (), org.lease(T0 + 20))) == Admitted((), ())
    assert await level_of(store, unleased, T0 + 10) == pytest.approx(90.0)


async def test_a_map_exactly_full_is_written_and_one_more_key_is_refused(org: Org) -> None:
    store = MemoryLimitStore(max_entries=2, sweep_step=0)
    slow = (bucket(org.bucket("a"), per_ms=1e-9), bucket(org.bucket("b"), per_ms=1e-9))
    assert await store.admit(plan(org, T0, slow)) == Admitted((9.0, 9.0), ())
    assert len(store) == 2
    with pytest.raises(LimitStoreUnavailable, match="all 2 limit store entries are live"):
        await store.admit(plan(org, T0, (bucket(org.bucket("c"), per_ms=1e-9),)))
    assert len(store) == 2


async def test_a_map_of_one_live_entry_refuses_a_second_key(org: Org) -> None:
    store = MemoryLimitStore(max_entries=1)
    assert await store.admit(plan(org, T0, (bucket(org.bucket("a"), per_ms=1e-9),))) == Admitted((9.0,), ())
    with pytest.raises(LimitStoreUnavailable):
        await store.admit(plan(org, T0, (bucket(org.bucket("b"), per_ms=1e-9),)))
    assert len(store) == 1


async def test_a_full_map_makes_room_by_dropping_an_idle_entry_to_fill_it_exactly(org: Org) -> None:
    store = MemoryLimitStore(max_entries=2, sweep_step=0)
    quick = bucket(org.bucket("quick"), per_ms=0.5)  # full again 2 ms after its take
    slow = bucket(org.bucket("slow"), per_ms=1e-9)
    assert await store.admit(plan(org, T0, (quick, slow))) == Admitted((9.0, 9.0), ())
    third = bucket(org.bucket("third"), per_ms=1e-9)
    assert await store.admit(plan(org, T0 + 10, (third,))) == Admitted((9.0,), ())
    assert len(store) == 2
    assert await level_of(store, slow, T0 + 10) == pytest.approx(9.0)


async def test_a_write_that_fits_leaves_idle_entries_to_the_sweep_step(org: Org) -> None:
    """Room is made only when a write would not fit: a fitting write costs no pass over the map."""
    store = MemoryLimitStore(max_entries=3, sweep_step=0)
    quick = (bucket(org.bucket("q1"), per_ms=0.5), bucket(org.bucket("q2"), per_ms=0.5))
    assert await store.admit(plan(org, T0, quick)) == Admitted((9.0, 9.0), ())
    assert await store.admit(plan(org, T0 + 10, (bucket(org.bucket("third")),))) == Admitted((9.0,), ())
    assert len(store) == 3  # both idle entries still there: the map was not over its bound
    # Known keys only: no room needed, nothing swept.
    assert await store.admit(plan(org, T0 + 10, quick)) == Admitted((9.0, 9.0), ())
    assert len(store) == 3


async def test_a_write_to_known_keys_of_a_full_map_needs_no_room(org: Org) -> None:
    store = MemoryLimitStore(max_entries=2, sweep_step=0)
    quick = bucket(org.bucket("quick"), per_ms=0.5)
    slow = bucket(org.bucket("slow"), per_ms=1e-9)
    assert await store.admit(plan(org, T0, (quick, slow))) == Admitted((9.0, 9.0), ())
    assert await store.admit(plan(org, T0 + 10, (slow,))) == Admitted((pytest.approx(8.0),), ())
    assert len(store) == 2  # the idle quick bucket is not swept for a write that adds no key


async def test_a_counter_refusal_in_a_full_map_still_locks_out_or_reports_the_store(org: Org) -> None:
    store = MemoryLimitStore(max_entries=1, sweep_step=0)
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 10, limit=10),))) == Admitted((), (10,))
    # The budget is spent, so the refusal locks the organisation out; no room for the lockout entry:
    # the store says so instead of refusing without one. (A refusal with room left locks nothing.)
    with pytest.raises(LimitStoreUnavailable):
        await store.admit(plan(org, T0, (), (counter(key, 1, limit=10),)))
    assert await used_of(store, key, T0) == 10


def test_a_store_needs_room_for_one_entry_and_a_step_not_negative() -> None:
    for bad in ({"max_entries": 0}, {"sweep_step": -1}):
        with pytest.raises(ValueError, match=r"^max_entries must be positive and sweep_step not negative$"):
            MemoryLimitStore(**bad)
    assert len(MemoryLimitStore(max_entries=1, sweep_step=0)) == 0


async def test_a_bucket_full_at_its_last_write_is_idle_at_once(org: Org) -> None:
    store = MemoryLimitStore(sweep_step=0)
    free = bucket(org.bucket(), cost=0.0, per_ms=1e-9)
    assert await store.admit(plan(org, T0, (free,))) == Admitted((10.0,), ())
    assert store.sweep(T0) == 1
    assert len(store) == 0


async def test_a_lease_holding_nothing_takes_no_room(org: Org) -> None:
    store = MemoryLimitStore(sweep_step=0)
    requests = bucket(org.bucket(), per_ms=1e-9)  # a request bucket: never part of what a lease holds
    assert await store.admit(plan(org, T0, (requests,), (), org.lease(T0 + 10))) == Admitted((9.0,), ())
    assert len(store) == 1


async def test_a_settle_within_the_lease_counts_the_actual_usage_at_once(org: Org) -> None:
    store = MemoryLimitStore()
    spend, leased = tokens(org.bucket("org:tokens"), 40.0), org.lease(T0 + 10)
    assert await store.admit(plan(org, T0, (spend,), (counter(org.counter(), 30),), leased)) == Admitted(
        (60.0,), (30,)
    )
    await store.adjust(
        (BucketAdjust(spend.key, 100.0, 1e-9, 40.0 - 25.0, 40.0),),
        (CounterAdjust(org.counter(), 25 - 30, T0 + 86_400_000, 30),),
        T0 + 5,
        leased,
    )
    assert await used_of(store, org.counter(), T0 + 5) == 25
    assert await level_of(store, spend, T0 + 5) == pytest.approx(75.0)


async def test_a_late_settle_while_the_organisation_holds_other_leases_charges_in_full(org: Org) -> None:
    store = MemoryLimitStore()
    key = org.counter()
    early, later = org.lease(T0 + 10, "early"), org.lease(T0 + 1_000, "later")
    for leased in (early, later):
        assert (await store.admit(plan(org, T0, (), (counter(key, 30),), leased))).__class__ is Admitted
    assert await store.admit(plan(org, T0 + 10, (), (), org.lease(T0 + 20))) == Admitted((), ())
    assert await used_of(store, key, T0 + 10) == 30  # the early one reaped, the later one held
    await store.adjust((), (CounterAdjust(key, 12 - 30, T0 + 86_400_000, 30),), T0 + 11, early)
    assert await used_of(store, key, T0 + 11) == 42


async def test_an_adjust_without_a_lease_charges_the_delta_alone(org: Org) -> None:
    store = MemoryLimitStore()
    spec = tokens(org.bucket("org:tokens"), 0.0)
    await store.adjust(
        (BucketAdjust(spec.key, 100.0, 1e-9, -10.0, 40.0),),
        (CounterAdjust(org.counter(), 5, T0 + 86_400_000, 30),),
        T0,
    )
    assert await level_of(store, spec, T0) == pytest.approx(90.0)
    assert await used_of(store, org.counter(), T0) == 5


async def test_a_full_map_makes_room_for_an_adjust_and_a_reap_too(org: Org) -> None:
    store = MemoryLimitStore(max_entries=3, sweep_step=0)
    leased = tokens(org.bucket("org:tokens"), 40.0, per_ms=1.0)  # full again 40 ms after its take
    assert await store.admit(plan(org, T0, (leased,), (), org.lease(T0 + 100))) == Admitted((60.0,), ())
    assert store.sweep(T0 + 50) == 1  # the refilled bucket goes; the lease stays
    slow = bucket(org.bucket("slow"), per_ms=1e-9)
    quick = bucket(org.bucket("quick"), per_ms=0.5)
    assert await store.admit(plan(org, T0 + 50, (slow, quick))) == Admitted((9.0, 9.0), ())
    # Full (lease, slow, quick): the reap re-creates the bucket, room made by dropping the idle quick.
    assert await store.admit(plan(org, T0 + 100, (), (), org.lease(T0 + 200))) == Admitted((), ())
    assert len(store) == 3
    assert await level_of(store, leased, T0 + 100) == pytest.approx(100.0)
    # Full again (lease, slow, bucket): an adjust of a new key drops the idle bucket to fit.
    await store.adjust((), (CounterAdjust(org.counter(), 5, T0 + 86_400_000),), T0 + 200)
    assert await used_of(store, org.counter(), T0 + 200) == 5
    assert len(store) <= 3


async def test_a_key_of_another_kind_is_named_in_the_refusal(org: Org) -> None:
    store = MemoryLimitStore()
    key = org.counter()
    assert await store.admit(plan(org, T0, (), (counter(key, 1),))) == Admitted((), (1,))
    wrong = BucketSpec(key, 10.0, 0.5, 1.0, "org", "requests")
    with pytest.raises(LimitStoreUnavailable, match=rf"^limit store key '{key}' holds a counter$"):
        await store.admit(plan(org, T0, (wrong,)))


async def test_clear_prefix_refuses_an_empty_prefix_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"^an empty prefix would clear every limit$"):
        await MemoryLimitStore().clear_prefix("")


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
