"""FR-7 user stories, run against every idempotency adapter: memory, LMDB in a temp dir, real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router_impl.limits.idempotency import (
    Conflict,
    IdempotencyStore,
    Proceed,
    Replay,
    StoredReply,
)
from router_impl.limits.idempotency_lmdb import LmdbIdempotencyStore
from router_impl.limits.idempotency_memory import MemoryIdempotencyStore
from router_impl.limits.idempotency_redis import RedisIdempotencyStore

T0 = 1_800_000_000.0
TTL = 3600.0
LEASE = 120.0
ORG = "org-1"
FP = "a" * 64
OTHER_FP = "b" * 64
OK = StoredReply(200, b'{"output":"hi"}', "application/json", (("X-Routing-Backend", "b1"),))


def redis_client(url: str) -> Redis:
    """One retry without backoff: a restarted server's stale connections reconnect, a dead one fails fast."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=32,
        timeout=5,
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


@pytest.fixture(params=["memory", "lmdb", pytest.param("redis", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    if request.param == "memory":
        yield MemoryIdempotencyStore(max_entries=10_000, ttl=TTL, lease=LEASE)
    elif request.param == "lmdb":
        lmdb_store = LmdbIdempotencyStore(tmp_path / "idempotency", ttl=TTL, lease=LEASE)
        yield lmdb_store
        lmdb_store.close()
    else:
        client = redis_client(request.getfixturevalue("redis_server").url)
        yield RedisIdempotencyStore(client, ttl=TTL, lease=LEASE, key_prefix=f"t{uuid.uuid4().hex}:")
        await client.aclose()


async def held(store: IdempotencyStore, key: str = "req-1", fingerprint: str = FP, now: float = T0) -> str:
    began = await store.begin(ORG, key, fingerprint, now)
    assert isinstance(began, Proceed)
    return began.token


async def test_first_request_proceeds_and_a_retry_gets_the_stored_reply(store: IdempotencyStore) -> None:
    token = await held(store)
    assert await store.complete(ORG, "req-1", token, OK, T0 + 1)
    assert await store.begin(ORG, "req-1", FP, T0 + 2) == Replay(OK)
    assert await store.begin(ORG, "req-1", FP, T0 + 3) == Replay(OK)


async def test_client_errors_are_stored_and_replayed_like_successes(store: IdempotencyStore) -> None:
    rejected = StoredReply(422, b'{"error":"bad"}', "application/json")
    assert await store.complete(ORG, "req-1", await held(store), rejected, T0)
    assert await store.begin(ORG, "req-1", FP, T0 + 1) == Replay(rejected)


async def test_same_key_with_a_different_request_is_a_conflict_in_flight_and_after(
    store: IdempotencyStore,
) -> None:
    token = await held(store)
    assert await store.begin(ORG, "req-1", OTHER_FP, T0 + 1) == Conflict("IDEMPOTENCY_CONFLICT")
    assert await store.complete(ORG, "req-1", token, OK, T0 + 2)
    assert await store.begin(ORG, "req-1", OTHER_FP, T0 + 3) == Conflict("IDEMPOTENCY_CONFLICT")
    assert Conflict("IDEMPOTENCY_CONFLICT").error().status_code == 409


async def test_duplicate_while_the_first_is_in_flight_is_request_in_progress(store: IdempotencyStore) -> None:
    await held(store)
    in_progress = await store.begin(ORG, "req-1", FP, T0 + LEASE - 0.001)
    assert in_progress == Conflict("REQUEST_IN_PROGRESS")
    assert isinstance(in_progress, Conflict) and in_progress.error().code == "REQUEST_IN_PROGRESS"


async def test_released_key_lets_the_retry_run_and_the_old_token_is_spent(store: IdempotencyStore) -> None:
    first = await held(store)
    assert await store.release(ORG, "req-1", first)
    assert not await store.release(ORG, "req-1", first)
    second = await held(store, now=T0 + 1)
    assert second != first
    assert not await store.complete(ORG, "req-1", first, OK, T0 + 2)
    assert await store.complete(ORG, "req-1", second, OK, T0 + 2)
    assert await store.begin(ORG, "req-1", FP, T0 + 3) == Replay(OK)


async def test_lapsed_lease_is_taken_over_and_the_stale_holder_is_refused(store: IdempotencyStore) -> None:
    stale = await held(store)
    fresh = await held(store, now=T0 + LEASE)
    stale_reply = StoredReply(200, b"stale", "text/plain")
    assert not await store.complete(ORG, "req-1", stale, stale_reply, T0 + LEASE + 1)
    assert not await store.release(ORG, "req-1", stale)
    assert await store.begin(ORG, "req-1", FP, T0 + LEASE + 1) == Conflict("REQUEST_IN_PROGRESS")
    assert await store.complete(ORG, "req-1", fresh, OK, T0 + LEASE + 2)
    assert await store.begin(ORG, "req-1", FP, T0 + LEASE + 3) == Replay(OK)


async def test_lapsed_lease_nobody_took_over_still_stores_the_slow_reply(store: IdempotencyStore) -> None:
    token = await held(store)
    assert await store.complete(ORG, "req-1", token, OK, T0 + LEASE + 5)
    assert await store.begin(ORG, "req-1", FP, T0 + LEASE + 6) == Replay(OK)


async def test_stored_reply_is_forgotten_after_the_ttl(store: IdempotencyStore) -> None:
    assert await store.complete(ORG, "req-1", await held(store), OK, T0)
    assert await store.begin(ORG, "req-1", FP, T0 + TTL - 0.001) == Replay(OK)
    assert isinstance(await store.begin(ORG, "req-1", OTHER_FP, T0 + TTL), Proceed)


async def test_a_hundred_concurrent_begins_on_one_key_let_exactly_one_proceed(
    store: IdempotencyStore,
) -> None:
    outcomes = await asyncio.gather(*(store.begin(ORG, "hot", FP, T0) for _ in range(100)))
    assert sum(isinstance(o, Proceed) for o in outcomes) == 1
    assert sum(o == Conflict("REQUEST_IN_PROGRESS") for o in outcomes) == 99


async def test_concurrent_begins_on_many_keys_each_proceed_once(store: IdempotencyStore) -> None:
    keys = [f"k{i}" for i in range(20)] * 5
    outcomes = await asyncio.gather(*(store.begin(ORG, k, FP, T0) for k in keys))
    proceeded = [k for k, o in zip(keys, outcomes, strict=True) if isinstance(o, Proceed)]
    assert sorted(proceeded) == sorted(set(keys))


async def test_binary_body_and_headers_round_trip_exactly(store: IdempotencyStore) -> None:
    body = bytes(range(256)) + b"\xff\xfe\x00\n\r\n" + "é✓".encode("utf-16")
    reply = StoredReply(
        201,
        body,
        "application/octet-stream; charset=binary",
        (("X-Routing-Decision", 'weighted "a"\\b'), ("X-Empty", ""), ("X-Routing-Backend", "naïve-✓")),
    )
    assert await store.complete(ORG, "bin", await held(store, "bin"), reply, T0)
    replayed = await store.begin(ORG, "bin", FP, T0 + 1)
    assert isinstance(replayed, Replay) and replayed.reply == reply and replayed.reply.body == body


async def test_empty_body_round_trips(store: IdempotencyStore) -> None:
    reply = StoredReply(204, b"", "")
    assert await store.complete(ORG, "empty", await held(store, "empty"), reply, T0)
    assert await store.begin(ORG, "empty", FP, T0 + 1) == Replay(reply)


async def test_the_same_key_in_two_organisations_is_two_requests(store: IdempotencyStore) -> None:
    first = await store.begin("org-a", "shared", FP, T0)
    second = await store.begin("org-b", "shared", OTHER_FP, T0)
    assert isinstance(first, Proceed) and isinstance(second, Proceed)
    assert await store.complete("org-a", "shared", first.token, OK, T0)
    assert not await store.complete("org-a", "shared", second.token, OK, T0)
    assert await store.begin("org-b", "shared", OTHER_FP, T0 + 1) == Conflict("REQUEST_IN_PROGRESS")
    assert await store.begin("org-a", "shared", FP, T0 + 1) == Replay(OK)


@pytest.mark.parametrize(
    ("scope", "key"),
    [
        ("org-1", "k" * 10_000),
        ("org}{x", "key"),
        ("{org-1}", "key"),
        ("org-1", "a}b{c"),
        ("o/r\x00g", "k/e\x00y"),
        ("", ""),
        ("организация", "ключ ✓ 🔑"),
        ("org-\ud800", "key-\udfff"),
        ("#" + "0" * 64, "#" + "0" * 64),
    ],
)
async def test_arbitrary_scope_and_key_strings_are_safe(
    store: IdempotencyStore, scope: str, key: str
) -> None:
    began = await store.begin(scope, key, "fp\ud800\x00{}" * 50, T0)
    assert isinstance(began, Proceed)
    assert await store.begin(scope, key, "other", T0) == Conflict("IDEMPOTENCY_CONFLICT")
    assert isinstance(await store.begin("org-1", "key", FP, T0), Proceed)  # no collision with a plain name
    assert await store.complete(scope, key, began.token, OK, T0)
    assert await store.begin(scope, key, "fp\ud800\x00{}" * 50, T0 + 1) == Replay(OK)


async def test_complete_or_release_without_holding_the_key_does_nothing(store: IdempotencyStore) -> None:
    assert not await store.complete(ORG, "never-begun", "token", OK, T0)
    assert not await store.release(ORG, "never-begun", "token")
    token = await held(store)
    assert not await store.complete(ORG, "req-1", token + "x", OK, T0)
    assert await store.complete(ORG, "req-1", token, OK, T0)
    assert not await store.complete(ORG, "req-1", token, StoredReply(500, b"", ""), T0)
    assert not await store.release(ORG, "req-1", token)
    assert await store.begin(ORG, "req-1", FP, T0 + 1) == Replay(OK)


async def test_now_may_be_an_aware_datetime(store: IdempotencyStore) -> None:
    start = datetime.fromtimestamp(T0, UTC)
    token = await held(store, now=T0)
    assert await store.begin(ORG, "req-1", FP, start + timedelta(seconds=LEASE - 1)) == Conflict(
        "REQUEST_IN_PROGRESS"
    )
    assert await store.complete(ORG, "req-1", token, OK, start)
    assert await store.begin(ORG, "req-1", FP, start + timedelta(seconds=TTL - 1)) == Replay(OK)
    with pytest.raises(ValueError, match="aware"):
        await store.begin(ORG, "req-2", FP, datetime(2027, 1, 1))
    other = await held(store, "req-3")
    with pytest.raises(ValueError, match="aware"):
        await store.complete(ORG, "req-3", other, OK, datetime(2027, 1, 1))
    assert await store.begin(ORG, "req-3", FP, T0 + 1) == Conflict("REQUEST_IN_PROGRESS")  # still held
