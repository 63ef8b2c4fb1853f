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


async def test_key_limited_to_some_models_may_use_only_those():
    secret = new_secret()
    auth = authenticator(record(secret, allowed_models={"gpt-small", "fast"}))
    principal = await auth.authenticate(secret)
    auth.authorize_model(principal, "gpt-small")
    auth.authorize_model(principal, "gpt-large-2025", "fast")  # allowed through the alias it asked for
    with pytest.raises(ApiError) as err:
        auth.authorize_model(principal, "gpt-large")
    assert (err.value.code, err.value.status_code) == ("MODEL_NOT_ALLOWED", 403)


async def test_key_without_model_list_may_use_any_model():
    secret = new_secret()
    auth = authenticator(record(secret))
    auth.authorize_model(await auth.authenticate(secret), "anything")


async def test_principal_carries_the_sealed_signing_secret_but_never_shows_it():
    secret = new_secret()
    auth = authenticator(record(secret, signature_required=True, signing_secret_enc="v1.sealed-token"))
    principal = await auth.authenticate(secret)
    assert principal.signing_secret_enc == "v1.sealed-token"
    assert principal.signature_required
    assert "sealed-token" not in repr(principal)
    assert "sealed-token" not in repr(record(secret, signing_secret_enc="v1.sealed-token"))


def test_new_secrets_give_a_prefix_the_contract_accepts():
    import re

    for _ in range(200):
        secret = new_secret()
        assert len(secret) == 46
        assert re.fullmatch(r"[A-Za-z0-9_]{4,32}", secret[:12])
