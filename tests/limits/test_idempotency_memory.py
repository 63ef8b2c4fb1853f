"""The in-process store stays bounded: by entries and by stored bytes, evicting the oldest replies first."""

from __future__ import annotations

import pytest

from router_impl.limits.idempotency import IdempotencyUnavailable, Proceed, Replay, StoredReply
from router_impl.limits.idempotency_memory import MemoryIdempotencyStore

T0 = 1_800_000_000.0
FP = "fp"


async def run_to_completion(store: MemoryIdempotencyStore, key: str, reply: StoredReply, now: float) -> None:
    began = await store.begin("org", key, FP, now)
    assert isinstance(began, Proceed)
    assert await store.complete("org", key, began.token, reply, now)


async def test_memory_store_stays_bounded_and_evicts_the_oldest_completed_replies() -> None:
    store = MemoryIdempotencyStore(max_entries=100, ttl=3600, lease=120)
    for i in range(1000):
        await run_to_completion(store, f"k{i}", StoredReply(200, b"x" * 10, "text/plain"), T0 + i / 1000)
        assert len(store) <= 100
    assert len(store) == 100
    assert isinstance(await store.begin("org", "k999", FP, T0 + 2), Replay)
    assert isinstance(await store.begin("org", "k900", FP, T0 + 2), Replay)
    assert isinstance(await store.begin("org", "k0", FP, T0 + 2), Proceed)  # evicted, so it runs again


async def test_in_flight_markers_are_never_evicted_so_a_full_store_refuses_new_keys() -> None:
    store = MemoryIdempotencyStore(max_entries=3, ttl=3600, lease=120)
    await run_to_completion(store, "done", StoredReply(200, b"", ""), T0)
    for key in ("a", "b", "c"):
        assert isinstance(await store.begin("org", key, FP, T0), Proceed)
    with pytest.raises(IdempotencyUnavailable):
        await store.begin("org", "d", FP, T0)
    assert isinstance(await store.begin("org", "d", FP, T0 + 120), Proceed)  # lapsed leases make room


async def test_expired_replies_are_dropped_as_new_requests_arrive() -> None:
    store = MemoryIdempotencyStore(max_entries=1000, ttl=10, lease=5)
    for i in range(50):
        await run_to_completion(store, f"old{i}", StoredReply(200, b"x", ""), T0)
    await run_to_completion(store, "new", StoredReply(200, b"y", ""), T0 + 10)
    assert len(store) == 1 and store.stored_bytes == 1


async def test_stored_bytes_are_bounded_too() -> None:
    store = MemoryIdempotencyStore(max_entries=1000, ttl=3600, lease=120, max_bytes=1000)
    for i in range(50):
        await run_to_completion(store, f"k{i}", StoredReply(200, b"x" * 100, ""), T0)
        assert store.stored_bytes <= 1000
    assert len(store) == 10
    assert isinstance(await store.begin("org", "k49", FP, T0), Replay)


async def test_a_reply_too_large_to_keep_frees_the_key_like_a_release() -> None:
    store = MemoryIdempotencyStore(max_entries=10, ttl=3600, lease=120, max_bytes=100)
    began = await store.begin("org", "big", FP, T0)
    assert isinstance(began, Proceed)
    assert not await store.complete("org", "big", began.token, StoredReply(200, b"x" * 101, ""), T0)
    assert len(store) == 0
    assert isinstance(await store.begin("org", "big", FP, T0 + 1), Proceed)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryIdempotencyStore(max_entries=0)
    with pytest.raises(ValueError):
        MemoryIdempotencyStore(max_entries=10, lease=0)
