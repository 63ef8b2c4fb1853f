"""The Redis limit store: exact under concurrency, its key layout, and failing fast when Redis is gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketSpec,
    CounterAdjust,
    CounterRefused,
    CounterSpec,
    Lease,
    LimitStoreUnavailable,
    LockedOut,
    Snapshot,
)
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.services import RedisServer
from tests.limits.test_idempotency_stores import redis_client

pytestmark = pytest.mark.services

NOW = int(time.time() * 1000)  # the Redis server's own clock: these tests check Redis's expiries
DAY_END = NOW + 86_400_000


def org_tag() -> str:
    return f"org-{uuid.uuid4().hex}"


def pooled_client(url: str, connections: int) -> Redis:
    return Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=connections, timeout=10))


def failing_client(port: int) -> Redis:
    return Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 1),
    )


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = redis_client(redis_server.url)
    yield redis
    await redis.aclose()


async def test_two_hundred_concurrent_admits_reserve_exactly_the_fifty_that_fit(
    redis_server: RedisServer,
) -> None:
    redis = pooled_client(redis_server.url, 50)
    try:
        store = RedisLimitStore(redis)
        tag = org_tag()
        key = f"budget:{{{tag}}}:DAILY:tokens"
        spec = CounterSpec(key, 50, 1, DAY_END, "DAILY", "tokens")
        plan = AdmitPlan(f"lockout:{{{tag}}}", (), (spec,), NOW)
        decisions = await asyncio.gather(*(store.admit(plan) for _ in range(200)))
        assert sum(isinstance(d, Admitted) for d in decisions) == 50
        assert all(isinstance(d, Admitted | CounterRefused | LockedOut) for d in decisions)
        assert sorted(d.used[0] for d in decisions if isinstance(d, Admitted)) == list(range(1, 51))
        assert await redis.get(key) == b"50"
    finally:
        await redis.aclose()


async def test_two_hundred_concurrent_admits_take_exactly_a_hundred_tokens(redis_server: RedisServer) -> None:
    redis = pooled_client(redis_server.url, 50)
    try:
        store = RedisLimitStore(redis)
        tag = org_tag()
        spec = BucketSpec(f"rl:{{{tag}}}:org:requests", 100.0, 1e-9, 1.0, "org", "requests")
        plans = [AdmitPlan(f"lockout:{{{tag}}}", (spec,), (), NOW + i) for i in range(200)]
        decisions = await asyncio.gather(*(store.admit(p) for p in plans))
        assert sum(isinstance(d, Admitted) for d in decisions) == 100
        seen = await store.snapshot(
            (BucketProbe(spec.key, 100.0, 1e-9),), (), f"lockout:{{{tag}}}", NOW + 200
        )
        assert 0.0 <= seen.levels[0] < 1.0
    finally:
        await redis.aclose()


async def test_keys_are_laid_out_as_documented_and_expire_in_redis(client: Redis) -> None:
    store = RedisLimitStore(client, expiry_margin_ms=5_000)
    tag = org_tag()
    bucket = BucketSpec(f"rl:{{{tag}}}:org:tokens", 1.0, 1e-3, 1 / 3, "org", "tokens")
    spent = CounterSpec(f"budget:{{{tag}}}:DAILY:tokens", 10, 10, DAY_END, "DAILY", "tokens")
    decision = await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (bucket,), (spent,), NOW))
    assert decision == Admitted((1 - 1 / 3,), (10,))
    # The level round-trips exactly (%.17g), not as Lua's 14-digit tostring.
    assert await client.hgetall(bucket.key) == {b"level": b"0.66666666666666674", b"ts_ms": str(NOW).encode()}
    assert float(b"0.66666666666666674") == 1 - 1 / 3
    # Full again in 334 ms, then the margin: an idle bucket leaves Redis by itself.
    assert 5_000 < await client.pttl(bucket.key) <= 5_334
    assert await client.get(spent.key) == b"10"
    assert await client.pexpiretime(spent.key) == DAY_END
    more = CounterSpec(spent.key, 10, 1, DAY_END, "DAILY", "tokens")
    assert await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (), (more,), NOW)) == CounterRefused(0, 10)
    assert await client.get(f"lockout:{{{tag}}}") == b"DAILY"
    assert await client.pexpiretime(f"lockout:{{{tag}}}") == DAY_END


async def test_settling_keeps_the_counter_expiry_and_refills_the_bucket_expiry(client: Redis) -> None:
    store = RedisLimitStore(client, expiry_margin_ms=0)
    tag = org_tag()
    key = f"budget:{{{tag}}}:MONTHLY:micro_usd"
    bucket = f"rl:{{{tag}}}:org:tokens"
    await store.adjust((BucketAdjust(bucket, 100.0, 0.01, -50.0),), (CounterAdjust(key, 7, DAY_END),), NOW)
    assert await client.get(key) == b"7"
    assert await client.pexpiretime(key) == DAY_END
    assert 4_900 < await client.pttl(bucket) <= 5_000  # 50 tokens at 10 per second


async def test_the_scripts_survive_a_script_flush(client: Redis) -> None:
    store = RedisLimitStore(client)
    tag = org_tag()
    spec = BucketSpec(f"rl:{{{tag}}}:org:requests", 5.0, 1e-9, 1.0, "org", "requests")
    plan = AdmitPlan(f"lockout:{{{tag}}}", (spec,), (), NOW)
    assert await store.admit(plan) == Admitted((4.0,), ())
    await client.script_flush()
    assert await store.admit(plan) == Admitted((3.0,), ())
    await client.script_flush()
    await store.adjust((BucketAdjust(spec.key, 5.0, 1e-9, 2.0),), (), NOW)
    await client.script_flush()
    probe = (BucketProbe(spec.key, 5.0, 1e-9),)
    assert await store.snapshot(probe, (), plan.lockout_key, NOW) == Snapshot((5.0,), (), None)


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: only a timeout ends the wait."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("kind", ["closed port", "silent server"])
async def test_an_unreachable_redis_is_unavailable_quickly_not_a_hang(kind: str) -> None:
    async with silent_server() as silent_port:
        redis = failing_client(free_port() if kind == "closed port" else silent_port)
        store = RedisLimitStore(redis)
        tag = org_tag()
        spec = BucketSpec(f"rl:{{{tag}}}:org:requests", 5.0, 1.0, 1.0, "org", "requests")
        started = time.monotonic()
        try:
            with pytest.raises(LimitStoreUnavailable):
                await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (spec,), (), NOW))
            with pytest.raises(LimitStoreUnavailable):
                await store.adjust((BucketAdjust(spec.key, 5.0, 1.0, 1.0),), (), NOW)
            with pytest.raises(LimitStoreUnavailable):
                await store.snapshot((), (), f"lockout:{{{tag}}}", NOW)
            with pytest.raises(LimitStoreUnavailable):
                await store.clear((spec.key,))
            with pytest.raises(LimitStoreUnavailable):
                await store.clear_prefix(f"rl:{{{tag}}}:")
        finally:
            await redis.aclose()
        assert time.monotonic() - started < 5  # five calls, each at most two 0.2 s attempts


async def test_a_client_that_decodes_responses_is_refused(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisLimitStore(redis)
    finally:
        await redis.aclose()


async def test_an_expiry_redis_would_reject_is_refused_before_anything_is_taken(client: Redis) -> None:
    store = RedisLimitStore(client)
    tag = org_tag()
    spec = BucketSpec(f"rl:{{{tag}}}:org:requests", 5.0, 1.0, 1.0, "org", "requests")
    bad = CounterSpec(f"budget:{{{tag}}}:DAILY:tokens", 10, 1, 0, "DAILY", "tokens")
    with pytest.raises(ValueError, match="expires_at_ms"):
        await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (spec,), (bad,), NOW))
    assert await client.exists(spec.key) == 0


async def test_clear_prefix_matches_glob_characters_literally(client: Redis) -> None:
    store = RedisLimitStore(client)
    tag = org_tag()
    literal, lookalike = f"rl:{{{tag}}}:key:a*[b]?:requests", f"rl:{{{tag}}}:key:aX[b]Y:requests"
    await store.adjust(
        (BucketAdjust(literal, 5.0, 1e-9, -1.0), BucketAdjust(lookalike, 5.0, 1e-9, -1.0)), (), NOW
    )
    assert await store.clear_prefix(f"rl:{{{tag}}}:key:a*[b]?") == (literal,)
    assert await client.exists(lookalike) == 1


@pytest.mark.parametrize("redis_clock", [True, False])
async def test_two_routers_whose_clocks_differ_by_2_s_admit_at_most_the_configured_rate(
    client: Redis, redis_clock: bool
) -> None:
    """One clock: a router 2 s ahead refilled the shared bucket by 2 s worth of tokens (10/s: +20,
    capped at the burst), so the pair admitted up to twice what the rate pays for."""
    burst, per_ms = 10.0, 10 / 1000  # 10 tokens, refilled at 10 per second
    tag = org_tag()
    spec = BucketSpec(f"rl:{{{tag}}}:org:requests", burst, per_ms, 1.0, "org", "requests")
    on_time = RedisLimitStore(client, redis_clock=redis_clock)
    ahead = RedisLimitStore(client, redis_clock=redis_clock)
    began = time.monotonic()
    admitted = 0
    for store, skew_ms in ((on_time, 0), (ahead, 2_000), (on_time, 0), (ahead, 2_000)):
        for _ in range(15):
            now = int(time.time() * 1000) + skew_ms  # each router's own wall clock
            admitted += isinstance(
                await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (spec,), (), now)), Admitted
            )
    allowed = burst + (time.monotonic() - began) * 1000 * per_ms  # what the configured rate pays for
    if redis_clock:
        assert admitted <= allowed + 1, (admitted, allowed)
    else:  # on each router's own clock (before): the skewed one refills the bucket ahead of time
        assert admitted > allowed + 5, (admitted, allowed)


@pytest.mark.parametrize("redis_clock", [True, False])
async def test_a_router_whose_clock_is_an_hour_behind_redis_keeps_its_leases_for_their_term(
    client: Redis, redis_clock: bool
) -> None:
    """A lease is due its term after the admit on the clock that reaps it. Before, the router's own
    now + term was judged against Redis's TIME: a router more than the term behind had its in-flight
    reservations given back by the next admit, and the budget overspent."""
    tag = org_tag()
    behind = int(time.time() * 1000) - 3_600_000  # an hour behind Redis (which runs on this machine)
    counter = CounterSpec(f"budget:{{{tag}}}:DAILY:tokens", 100, 30, DAY_END, "DAILY", "tokens")
    store = RedisLimitStore(client, redis_clock=redis_clock)

    async def admit(n: int) -> object:
        lease = Lease(f"lease:{{{tag}}}", f"lease:{{{tag}}}:held", f"lease-{n}", behind + 60_000)
        return await store.admit(AdmitPlan(f"lockout:{{{tag}}}", (), (counter,), behind, lease))

    assert await admit(1) == Admitted((), (30,))
    # One minute's term on each store's clock: on Redis's, due in a minute; on the caller's (an hour
    # behind), the first lease is already due when the caller's second admit is judged by it.
    assert await admit(2) == Admitted((), (60,))
    assert await client.zcard(f"lease:{{{tag}}}") == 2
