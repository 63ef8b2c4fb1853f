"""RedisNonceStore against a real redis-server: replay protection shared by every replica."""

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from router_impl.auth.nonces import RedisNonceStore
from router_impl.auth.signing import SignatureVerifier, nonce_key, sign_request
from router_impl.errors import ApiError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SECRET = b"rs_redis-test-secret"


@pytest.fixture
async def redis(redis_server):
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_a_nonce_is_accepted_once_and_expires_by_itself(redis):
    store = RedisNonceStore(redis)
    key = nonce_key("key_1", "ab" * 32)
    assert await store.first_use(key, 600)
    assert not await store.first_use(key, 600)
    assert 0 < await redis.ttl(key) <= 600
    assert key.startswith("nonce:{key_1}:")  # hash tag: one key's nonces share a cluster slot


async def test_a_nonce_can_be_used_again_after_its_ttl(redis):
    store = RedisNonceStore(redis)
    assert await store.first_use("nonce:{k}:short", 1)
    await asyncio.sleep(1.2)
    assert await store.first_use("nonce:{k}:short", 1)


async def test_concurrent_uses_of_one_nonce_let_exactly_one_through(redis):
    store = RedisNonceStore(redis)
    results = await asyncio.gather(*(store.first_use("nonce:{k}:race", 60) for _ in range(50)))
    assert results.count(True) == 1


async def test_a_signature_replayed_to_another_replica_is_refused(redis):
    replica_a = SignatureVerifier(RedisNonceStore(redis), clock=lambda: NOW)
    replica_b = SignatureVerifier(RedisNonceStore(redis), clock=lambda: NOW)
    body = b'{"payload":"x"}'
    headers = sign_request(SECRET, "POST", "/v1/inference", body, int(NOW.timestamp()))
    args = (
        "key_1",
        SECRET,
        "POST",
        "/v1/inference",
        body,
        headers["X-Signature-Timestamp"],
        headers["X-Signature"],
    )
    await replica_a.verify_headers(*args)
    with pytest.raises(ApiError) as err:
        await replica_b.verify_headers(*args)
    assert err.value.code == "SIGNATURE_REPLAYED"
    assert 0 < await redis.ttl(nonce_key("key_1", headers["X-Signature"])) <= 600


async def test_without_redis_signed_requests_are_turned_away_not_let_through():
    from tests.harness.ports import free_port

    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(ApiError) as err:
            await RedisNonceStore(client).first_use("nonce:{k}:x", 60)
        assert (err.value.code, err.value.status_code) == ("SERVICE_UNAVAILABLE", 503)
    finally:
        await client.aclose()
