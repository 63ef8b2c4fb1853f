"""The in-memory nonce store: a nonce is accepted once per TTL, and the store stays bounded and drops
expired entries (the Redis store: tests/auth/test_redis_nonces.py)."""

from __future__ import annotations

from router_impl.auth.nonces import MemoryNonceStore


async def test_memory_nonce_is_accepted_once_then_again_after_its_ttl():
    now = [0.0]
    store = MemoryNonceStore(clock=lambda: now[0])
    assert await store.first_use("n", 10)
    assert not await store.first_use("n", 10)
    now[0] = 9.9
    assert not await store.first_use("n", 10)
    now[0] = 10.0
    assert await store.first_use("n", 10)


async def test_memory_nonce_store_never_grows_past_its_bound():
    now = [0.0]
    store = MemoryNonceStore(max_entries=100, clock=lambda: now[0])
    for i in range(1000):
        assert await store.first_use(f"n{i}", 600)
        assert len(store) <= 100
    assert store.evicted_live == 900
    assert not await store.first_use("n999", 600)  # the newest are kept


async def test_memory_nonce_store_drops_expired_entries_as_time_passes():
    now = [0.0]
    store = MemoryNonceStore(clock=lambda: now[0])
    for i in range(50):
        await store.first_use(f"n{i}", 10)
    now[0] = 11.0
    await store.first_use("fresh", 10)
    assert len(store) == 1
    assert store.evicted_live == 0
