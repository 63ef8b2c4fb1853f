"""The Redis store: key layout for Redis Cluster, expiry by Redis itself, and behaviour across a restart."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from router_impl.limits.idempotency import Conflict, IdempotencyUnavailable, Proceed, Replay, StoredReply
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
            b"o": store.owner.encode(),
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


async def test_a_dead_routers_in_flight_entry_is_taken_over_at_once(redis_server: RedisServer) -> None:
    """15.3: before, a retry of a request whose router was SIGKILLed got 409 for the whole lease (120 s)."""
    client = redis_client(redis_server.url)
    prefix = fresh_prefix()
    killed = RedisIdempotencyStore(client, lease=120, key_prefix=prefix, owner="host.101.1")
    survivor = RedisIdempotencyStore(client, lease=120, key_prefix=prefix, owner="host.202.2")
    try:
        await killed.claim([])
        await survivor.claim([])
        held = await killed.begin("org", "req", FP, T0)
        assert isinstance(held, Proceed)
        in_progress = await survivor.begin("org", "req", FP, T0 + 1)
        # The owner is alive: 409, with a Retry-After no longer than its owner key can outlive it.
        assert isinstance(in_progress, Conflict) and 1 <= in_progress.retry_after <= 5
        assert in_progress.error().headers["Retry-After"] == str(in_progress.retry_after)
        # The killed router restarts on its data dir, knows its predecessor died, and says so.
        await RedisIdempotencyStore(client, key_prefix=prefix, owner="host.101.3").claim(["host.101.1"])
        taken = await survivor.begin("org", "req", FP, T0 + 2)
        assert isinstance(taken, Proceed)
        assert await client.hget(survivor.redis_key("org", "req"), "o") == b"host.202.2"
        assert not await killed.complete("org", "req", held.token, OK, T0 + 3)  # the dead attempt lost it
        assert await survivor.complete("org", "req", taken.token, OK, T0 + 3)
        assert await killed.begin("org", "req", FP, T0 + 4) == Replay(OK)
    finally:
        await client.aclose()


async def test_an_owner_whose_key_lapsed_is_dead_and_a_live_one_keeps_its_entry(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    prefix = fresh_prefix()
    silent = RedisIdempotencyStore(client, key_prefix=prefix, owner="host.1.1")  # never heartbeats
    other = RedisIdempotencyStore(client, key_prefix=prefix, owner="host.2.2")
    try:
        assert isinstance(await silent.begin("org", "lapsed", FP, T0), Proceed)
        assert isinstance(await other.begin("org", "lapsed", FP, T0 + 1), Proceed)
        # A different request under a live owner's key is still a conflict, and its own retry waits.
        await other.heartbeat()
        assert await silent.begin("org", "lapsed", "other-fp", T0 + 2) == Conflict("IDEMPOTENCY_CONFLICT")
        assert await silent.begin("org", "lapsed", FP, T0 + 2) == Conflict("REQUEST_IN_PROGRESS")
        await other.retire()  # a clean stop drops the owner key
        assert isinstance(await silent.begin("org", "lapsed", FP, T0 + 3), Proceed)
    finally:
        await client.aclose()


async def test_an_in_flight_entry_lasts_until_the_request_deadline_not_the_whole_lease(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    prefix = fresh_prefix()
    store = RedisIdempotencyStore(client, lease=120, key_prefix=prefix, owner="host.3.3")
    try:
        await store.claim([])
        assert isinstance(await store.begin("org", "d", FP, T0, deadline=T0 + 7), Proceed)
        assert 6_000 < await client.pttl(store.redis_key("org", "d")) <= 7_000
        refused = await store.begin("org", "d", FP, T0 + 6.5)
        assert refused == Conflict("REQUEST_IN_PROGRESS") and refused.retry_after == 1
        assert isinstance(await store.begin("org", "d", FP, T0 + 7), Proceed)
    finally:
        await client.aclose()
