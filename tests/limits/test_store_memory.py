"""The in-process limit store's own rules: a lapsed lease gives back exactly what it took (never a
refill to full), and the memory bound admits a map exactly full, refuses one entry more, and sweeps
only when a write would not fit."""

from __future__ import annotations

import pytest

from router_impl.limits.store import Admitted, LimitStoreUnavailable
from router_impl.limits.store_memory import MemoryLimitStore
from tests.limits.test_limit_stores import T0, Org, bucket, counter, level_of, plan, tokens, used_of


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
    assert await store.admit(plan(org, T0, (), (counter(key, 5, limit=10),))) == Admitted((), (5,))
    with pytest.raises(LimitStoreUnavailable):  # no room for the lockout: the store says so
        await store.admit(plan(org, T0, (), (counter(key, 6, limit=10),)))
    assert await used_of(store, key, T0) == 5


def test_a_store_needs_room_for_one_entry_and_a_step_not_negative() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryLimitStore(max_entries=0)
    with pytest.raises(ValueError, match="sweep_step"):
        MemoryLimitStore(sweep_step=-1)
    assert len(MemoryLimitStore(max_entries=1, sweep_step=0)) == 0
