"""The Redis store: key layout for Redis Cluster, expiry by Redis itself, and behaviour across a restart."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from router_impl.limits.idempotency import IdempotencyUnavailable, Proceed, Replay, StoredReply
from router_impl.limits.idempotency_redis import RedisIdempotencyStore
from tests.harness.services import RedisServer
from tests.limits.test_idempotency_stores import redis_client

pytestmark = pytest.mark.services

T0 = 1_800_000_000.0
FP = "fp"
OK = StoredReply(200, b"\x80ok", "text/plain")


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex}:"


async def test_entries_are_hashes_tagged_by_organisation_and_expire_in_redis(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    prefix = fresh_prefix()
    store = RedisIdempotencyStore(client, ttl=3600, lease=120, key_prefix=prefix)
    try:
        began = await store.begin("org-1", "req-1", FP, T0)
        assert isinstance(began, Proceed)
        key = f"{prefix}{{org-1}}:req-1"
        assert store.redis_key("org-1", "req-1") == key
        assert await client.hgetall(key) == {
            b"s": b"p",
            b"f": b"fp",
            b"t": began.token.encode(),
            b"u": str(int(T0 * 1000) + 120_000).encode(),
        }
        assert 119_000 < await client.pttl(key) <= 120_000
        assert await store.complete("org-1", "req-1", began.token, OK, T0)
        assert set(await client.hkeys(key)) == {b"s", b"f", b"u", b"r"}
        assert 3_599_000 < await client.pttl(key) <= 3_600_000
        slots = {key_slot(store.redis_key("org-1", k).encode()) for k in ("a", "b", "c" * 500, "{x}")}
        assert slots == {key_slot(b"{org-1}")}
    finally:
        await client.aclose()


async def test_a_flushed_script_cache_is_reloaded_transparently(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    store = RedisIdempotencyStore(client, ttl=3600, lease=120, key_prefix=fresh_prefix())
    try:
        began = await store.begin("org", "k", FP, T0)
        assert isinstance(began, Proceed)
        await client.script_flush()
        assert await store.complete("org", "k", began.token, OK, T0)
        await client.script_flush()
        assert await store.begin("org", "k", FP, T0 + 1) == Replay(OK)
    finally:
        await client.aclose()


async def test_redis_down_is_unavailable_and_the_store_works_again_after_a_restart(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    store = RedisIdempotencyStore(client, ttl=3600, lease=120, key_prefix=fresh_prefix())
    try:
        began = await store.begin("org", "before", FP, T0)
        assert isinstance(began, Proceed)
        redis_server.stop()
        try:
            with pytest.raises(IdempotencyUnavailable):
                await store.begin("org", "during", FP, T0)
            with pytest.raises(IdempotencyUnavailable):
                await store.complete("org", "before", began.token, OK, T0)
            with pytest.raises(IdempotencyUnavailable):
                await store.release("org", "before", began.token)
        finally:
            redis_server.start()
        # The test server keeps nothing across a restart, so the held key is gone and its token spent.
        assert not await store.complete("org", "before", began.token, OK, T0)
        again = await store.begin("org", "during", FP, T0)
        assert isinstance(again, Proceed)
        assert await store.complete("org", "during", again.token, OK, T0)
        assert await store.begin("org", "during", FP, T0 + 1) == Replay(OK)
    finally:
        await client.aclose()


async def test_a_client_that_decodes_responses_is_refused(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisIdempotencyStore(client)
    finally:
        await client.aclose()


async def test_a_key_prefix_with_braces_is_refused(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    try:
        with pytest.raises(ValueError, match="hash tag"):
            RedisIdempotencyStore(client, key_prefix="idem:{x}:")
    finally:
        await client.aclose()


async def test_a_wrong_type_at_the_key_is_unavailable_not_a_crash(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    store = RedisIdempotencyStore(client, key_prefix=fresh_prefix())
    try:
        await client.set(store.redis_key("org", "k"), "not a hash")
        with pytest.raises(IdempotencyUnavailable):
            await store.begin("org", "k", FP, T0)
    finally:
        await client.aclose()
