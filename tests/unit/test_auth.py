from datetime import UTC, datetime, timedelta

import pytest

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.keys import ApiKeyRecord, InMemoryKeyStore, hash_secret, new_secret
from router_impl.errors import ApiError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def record(secret: str, **overrides) -> ApiKeyRecord:
    fields = {
        "id": "k1",
        "organization_id": "org-a",
        "key_hash": hash_secret(secret),
        "scopes": {"inference"},
    }
    return ApiKeyRecord(**(fields | overrides))


def authenticator(*records: ApiKeyRecord) -> Authenticator:
    return Authenticator(InMemoryKeyStore(records), clock=lambda: NOW)


async def test_valid_key_yields_its_principal():
    secret = new_secret()
    principal = await authenticator(record(secret)).authenticate(secret)
    assert (principal.key_id, principal.organization_id, principal.scopes) == ("k1", "org-a", {"inference"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"revoked": True},
        {"expires_at": NOW},
        {"expires_at": NOW - timedelta(seconds=1)},
    ],
    ids=["revoked", "expires-now", "expired"],
)
async def test_revoked_and_expired_keys_are_refused(overrides):
    secret = new_secret()
    with pytest.raises(ApiError) as err:
        await authenticator(record(secret, **overrides)).authenticate(secret)
    assert (err.value.code, err.value.status_code) == ("INVALID_API_KEY", 401)


@pytest.mark.parametrize("presented", ["", "   ", "rk_unknown", "x" * 257])
async def test_unknown_empty_and_oversized_keys_are_refused(presented):
    with pytest.raises(ApiError) as err:
        await authenticator(record(new_secret())).authenticate(presented)
    assert err.value.code == "INVALID_API_KEY"


async def test_key_not_yet_expired_is_accepted():
    secret = new_secret()
    await authenticator(record(secret, expires_at=NOW + timedelta(seconds=1))).authenticate(secret)


async def test_missing_scope_is_forbidden_and_present_scope_passes():
    secret = new_secret()
    auth = authenticator(record(secret))
    principal = await auth.authenticate(secret)
    auth.authorize(principal, "inference")
    auth.authorize(principal, None)
    with pytest.raises(ApiError) as err:
        auth.authorize(principal, "admin")
    assert (err.value.code, err.value.status_code) == ("FORBIDDEN", 403)


def test_only_the_hash_is_stored():
    secret = new_secret()
    dumped = record(secret).model_dump_json()
    assert secret not in dumped
    assert hash_secret(secret) in dumped
