"""IdentityServiceKeyStore against the mock identity service: caching, fail-static, single-flight."""

import asyncio
from datetime import UTC, datetime

import pytest

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.identity import IdentityServiceKeyStore
from router_impl.auth.keys import hash_secret, new_secret
from router_impl.auth.secret_box import SecretBox
from router_impl.errors import ApiError
from tests.harness.clock import ManualClock
from tests.harness.identity import REVOCATIONS_PATH, MockIdentityService
from tests.harness.wait import eventually

BOX = SecretBox(b"k" * 32)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_store(identity_service: MockIdentityService, clock: ManualClock):
    stores = []

    def make(token: str | None = None, **overrides) -> IdentityServiceKeyStore:
        # Generous: the service is a thread of this process, and a busy machine has taken more
        # than 0.5 s over a healthy call to such a service. Tests of a slow service set their own.
        options = {"secret_box": BOX, "clock": clock, "timeout": 10.0} | overrides
        store = IdentityServiceKeyStore(identity_service.base_url, token or identity_service.token, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def add_key(service: MockIdentityService, key_id: str = "key_1", **fields) -> str:
    secret = new_secret()
    service.add_key(secret, id=key_id, organization_id="org-a", **fields)
    return secret


async def test_valid_key_is_answered_from_cache_until_its_ttl(identity_service, make_store, clock):
    secret = add_key(identity_service, allowed_models=["m1"])
    store = make_store(positive_ttl=60)
    first = await store.by_hash(hash_secret(secret))
    assert first is not None and (first.id, first.allowed_models) == ("key_1", frozenset({"m1"}))
    for _ in range(10):
        assert await store.by_hash(hash_secret(secret)) == first
    assert (identity_service.calls(), store.cache_hits) == (1, 10)
    clock.advance(60)
    await store.by_hash(hash_secret(secret))
    assert identity_service.calls() == 2


async def test_service_ttl_is_honoured_but_never_beyond_ours(identity_service, make_store, clock):
    secret = add_key(identity_service)
    identity_service.configure(cache_ttl_seconds=10)
    store = make_store(positive_ttl=60)
    await store.by_hash(hash_secret(secret))
    clock.advance(10)
    await store.by_hash(hash_secret(secret))
    assert identity_service.calls() == 2
    identity_service.configure(cache_ttl_seconds=86_400)
    clock.advance(10)
    await store.by_hash(hash_secret(secret))
    clock.advance(59)
    await store.by_hash(hash_secret(secret))
    assert identity_service.calls() == 3
    clock.advance(1)
    await store.by_hash(hash_secret(secret))
    assert identity_service.calls() == 4


async def test_unknown_key_is_remembered_briefly(identity_service, make_store, clock):
    store = make_store(negative_ttl=5)
    secret = new_secret()
    assert await store.by_hash(hash_secret(secret)) is None
    assert await store.by_hash(hash_secret(secret)) is None
    assert identity_service.calls() == 1
    identity_service.add_key(secret, id="key_new", organization_id="org-a")  # created just now
    clock.advance(5)
    found = await store.by_hash(hash_secret(secret))
    assert found is not None and found.id == "key_new"
    assert identity_service.calls() == 2


async def test_revoked_key_stops_working_when_its_cached_answer_expires(identity_service, make_store, clock):
    secret = add_key(identity_service)
    store = make_store(positive_ttl=30)
    auth = Authenticator(store, clock=lambda: NOW)
    await auth.authenticate(secret)
    identity_service.revoke("key_1")
    clock.advance(29)
    await auth.authenticate(secret)  # still inside the TTL the service allowed
    clock.advance(1)
    with pytest.raises(ApiError) as err:
        await auth.authenticate(secret)
    assert err.value.code == "INVALID_API_KEY"


async def test_revocation_feed_revokes_cached_keys_before_their_ttl(identity_service, make_store, clock):
    secret = add_key(identity_service)
    other = add_key(identity_service, key_id="key_2")
    store = make_store(positive_ttl=60)
    auth = Authenticator(store, clock=lambda: NOW)
    await auth.authenticate(secret)
    await auth.authenticate(other)
    assert await store.poll_revocations() == 0
    identity_service.revoke("key_1")
    assert await store.poll_revocations() == 1
    with pytest.raises(ApiError):
        await auth.authenticate(secret)
    await auth.authenticate(other)
    assert await store.poll_revocations() == 0  # the feed resumes after what it has seen
    identity_service.down()
    clock.advance(120)
    with pytest.raises(ApiError):  # a revoked key is never served stale
        await auth.authenticate(secret)
    await auth.authenticate(other)


@pytest.mark.parametrize("fault", ["down", "status_500", "status_503", "slow", "reset", "bad_token"])
async def test_outage_keeps_recently_valid_keys_working_and_refuses_unknown_ones(
    identity_service, make_store, clock, fault
):
    secret = add_key(identity_service)
    # A slow answer costs the store's timeout each time; the healthy first call must fit in it too.
    store = make_store(positive_ttl=60, stale_window=900, timeout=2.0 if fault == "slow" else 10.0)
    auth = Authenticator(store, clock=lambda: NOW)
    await auth.authenticate(secret)
    assert not store.degraded

    if fault == "down":
        identity_service.down()
    elif fault.startswith("status_"):
        identity_service.configure(fixed_status=int(fault.removeprefix("status_")))
    elif fault == "slow":
        identity_service.configure(latency_ms=4000)
    elif fault == "reset":
        identity_service.configure(reset=True)
    else:
        identity_service.token = "rotated-without-telling-the-router"

    clock.advance(61)  # the cached answer is stale: the store must ask again, and cannot
    principal = await auth.authenticate(secret)
    assert principal.key_id == "key_1"
    assert store.degraded and store.stale_served == 1
    with pytest.raises(ApiError) as err:
        await auth.authenticate(new_secret())  # never seen: refused, but as retryable, not as a bad key
    assert (err.value.code, err.value.status_code) == ("IDENTITY_UNAVAILABLE", 503)
    assert int(err.value.headers["Retry-After"]) >= 1

    clock.advance(900 - 61 - 1)  # just inside the stale window
    await auth.authenticate(secret)
    clock.advance(1)  # 900 s after the service last vouched for it: cannot be checked, so 503
    with pytest.raises(ApiError) as err:
        await auth.authenticate(secret)
    assert err.value.code == "IDENTITY_UNAVAILABLE"


async def test_service_recovery_clears_degraded_and_refreshes(identity_service, make_store, clock):
    secret = add_key(identity_service)
    store = make_store(positive_ttl=60)
    await store.by_hash(hash_secret(secret))
    identity_service.configure(fixed_status=500)
    clock.advance(61)
    assert await store.by_hash(hash_secret(secret)) is not None
    assert store.degraded
    identity_service.configure(fixed_status=None)
    clock.advance(2)
    assert await store.by_hash(hash_secret(secret)) is not None
    assert not store.degraded and store.failures == 1


async def test_a_failing_service_is_not_hammered(identity_service, make_store, clock):
    identity_service.configure(fixed_status=503)
    store = make_store(retry_after_failure=1.0)
    for _ in range(20):
        with pytest.raises(ApiError) as err:
            await store.by_hash(hash_secret(new_secret()))
        assert err.value.code == "IDENTITY_UNAVAILABLE" and err.value.headers["Retry-After"] == "1"
    assert identity_service.calls() == 1  # later lookups are answered 503 without a call
    clock.advance(1)
    with pytest.raises(ApiError):
        await store.by_hash(hash_secret(new_secret()))
    assert identity_service.calls() == 2


async def test_a_failed_lookup_is_never_remembered_as_an_invalid_key(identity_service, make_store, clock):
    """Before: one failed lookup made every uncached key 401 (a client throws such a key away)."""
    secret = add_key(identity_service)
    store = make_store(retry_after_failure=1.0)
    auth = Authenticator(store, clock=lambda: NOW)
    identity_service.configure(fixed_status=500)
    for attempt in (secret, new_secret(), secret):
        with pytest.raises(ApiError) as err:
            await auth.authenticate(attempt)
        assert (err.value.code, err.value.status_code) == ("IDENTITY_UNAVAILABLE", 503)
    identity_service.configure(fixed_status=None)
    clock.advance(1)  # the hold-off is over: the very same key is asked about again, and is valid
    assert (await auth.authenticate(secret)).key_id == "key_1"
    unknown = new_secret()
    with pytest.raises(ApiError) as err:  # the service itself says "no such key": now it is a 401
        await auth.authenticate(unknown)
    assert err.value.code == "INVALID_API_KEY"
    identity_service.down()
    with pytest.raises(ApiError) as err:  # its "no" is remembered for the negative TTL, outage or not
        await auth.authenticate(unknown)
    assert err.value.code == "INVALID_API_KEY"


async def test_fifty_concurrent_lookups_of_one_key_make_one_call(identity_service, make_store):
    secret = add_key(identity_service)
    identity_service.configure(latency_ms=100)
    store = make_store()
    results = await asyncio.gather(*(store.by_hash(hash_secret(secret)) for _ in range(50)))
    assert {r.id for r in results} == {"key_1"}
    assert identity_service.calls() == 1


async def test_fifty_concurrent_lookups_during_an_outage_make_one_call(identity_service, make_store, clock):
    secret = add_key(identity_service)
    store = make_store()
    await store.by_hash(hash_secret(secret))
    identity_service.configure(latency_ms=100, fixed_status=500)
    clock.advance(61)
    results = await asyncio.gather(*(store.by_hash(hash_secret(secret)) for _ in range(50)))
    assert {r.id for r in results} == {"key_1"}
    assert identity_service.calls() == 2 and store.stale_served == 50


async def test_a_caller_giving_up_does_not_cancel_the_lookup_others_wait_for(identity_service, make_store):
    secret = add_key(identity_service)
    identity_service.configure(latency_ms=500)
    store = make_store(timeout=5.0)
    impatient = asyncio.create_task(store.by_hash(hash_secret(secret)))
    patient = asyncio.create_task(store.by_hash(hash_secret(secret)))
    await eventually(lambda: identity_service.calls() == 1, what="the one lookup at the identity service")
    assert not patient.done()  # both are waiting on that one lookup when the first gives up
    impatient.cancel()
    assert (await patient).id == "key_1"
    assert identity_service.calls() == 1


async def test_unknown_key_spray_cannot_evict_valid_keys(identity_service, make_store):
    secret = add_key(identity_service)
    store = make_store(max_entries=100, max_negative_entries=10)
    await store.by_hash(hash_secret(secret))
    for _ in range(50):
        await store.by_hash(hash_secret(new_secret()))
    calls = identity_service.calls()
    assert await store.by_hash(hash_secret(secret)) is not None
    assert identity_service.calls() == calls


async def test_signing_secret_from_the_service_is_kept_only_sealed(identity_service, make_store):
    secret = add_key(identity_service, signature_required=True, signing_secret="rs_from-the-identity-service")
    store = make_store()
    record = await store.by_hash(hash_secret(secret))
    assert record.signature_required
    assert BOX.decrypt(record.signing_secret_enc, context="key_1") == "rs_from-the-identity-service"
    assert "rs_from-the-identity-service" not in repr(record) + record.model_dump_json()


async def test_router_sends_only_the_hash_and_its_service_token(identity_service, make_store):
    secret = add_key(identity_service)
    store = make_store()
    assert await store.by_hash(hash_secret(secret)) is not None  # the mock checks body and bearer token
    misconfigured = make_store(token="not-the-service-token")
    with pytest.raises(ApiError) as err:  # the service's 401 is an outage, never a "yes" nor a "no"
        await misconfigured.by_hash(hash_secret(secret))
    assert err.value.code == "IDENTITY_UNAVAILABLE"
    assert misconfigured.degraded


async def test_revocation_feed_follower_keeps_polling_through_failures(identity_service, make_store):
    secret = add_key(identity_service)
    store = make_store(positive_ttl=60)
    await store.by_hash(hash_secret(secret))
    identity_service.configure(fixed_status=500)
    follower = asyncio.create_task(store.follow_revocations(interval_seconds=0.01))
    try:
        await eventually(lambda: identity_service.calls(REVOCATIONS_PATH) >= 3, what="polls failing")
        identity_service.configure(fixed_status=None)
        identity_service.revoke("key_1")

        async def revoked() -> bool:
            return (await store.by_hash(hash_secret(secret))).revoked

        await eventually(revoked, timeout=2.0, interval=0.01, what="the revocation from the feed")
    finally:
        follower.cancel()
    assert identity_service.calls() == 1  # the revocation came from the feed, not a revalidation


async def test_malformed_hash_is_unknown_without_asking_the_service(identity_service, make_store):
    store = make_store()
    assert await store.by_hash("not-a-hash") is None
    assert await store.by_hash("A" * 64) is None
    assert identity_service.calls() == 0 and not store.degraded
