"""LmdbKeyStore against real LMDB environments in temp dirs."""

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router_impl.auth.admin import encode_cursor
from router_impl.auth.authenticator import Authenticator
from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.auth.secret_box import SecretBox
from router_impl.auth.store_lmdb import LmdbKeyStore
from router_impl.errors import ApiError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BOX = SecretBox(b"k" * 32)
REPO = Path(__file__).resolve().parents[2]


def static_key(key_id: str, secret: str, org: str = "org-static") -> ApiKeyRecord:
    return ApiKeyRecord(id=key_id, organization_id=org, key_hash=hash_secret(secret), scopes={"inference"})


@pytest.fixture
def store(tmp_path):
    s = LmdbKeyStore(tmp_path / "keys", [static_key("static-1", "rk_static_one")], secret_box=BOX)
    yield s
    s.close()


async def create(store: LmdbKeyStore, org: str = "org-a", at: datetime = NOW, **overrides):
    args = {
        "organization_id": org,
        "name": "ci",
        "scopes": ["inference"],
        "allowed_models": None,
        "expires_at": None,
        "signature_required": False,
        "now": at,
    }
    return await store.create(**(args | overrides))


async def test_created_key_is_found_by_its_secret_and_authenticates(store):
    record, secret, signing_secret = await create(store, allowed_models=["m1"])
    assert signing_secret is None
    assert await store.by_hash(hash_secret(secret)) == record
    assert await store.get(record.id) == record
    principal = await Authenticator(store, clock=lambda: NOW).authenticate(secret)
    assert (principal.key_id, principal.organization_id, principal.allowed_models) == (
        record.id,
        "org-a",
        frozenset({"m1"}),
    )


async def test_unknown_and_odd_lookups_find_nothing(store):
    assert await store.by_hash("f" * 64) is None
    assert await store.by_hash("") is None
    assert await store.by_hash("x" * 600) is None
    assert await store.get("") is None
    assert await store.get("nope") is None


async def test_static_keys_from_the_runtime_config_are_served(store):
    found = await store.by_hash(hash_secret("rk_static_one"))
    assert found is not None and found.id == "static-1"
    assert (await store.get("static-1")) == found


async def test_neither_the_secret_nor_the_signing_secret_is_ever_written_to_disk(tmp_path):
    store = LmdbKeyStore(tmp_path / "keys", secret_box=BOX)
    record, secret, signing_secret = await create(store, signature_required=True)
    await store.revoke(record.id, NOW, "rotation")
    store.close()
    data = b"".join(p.read_bytes() for p in (tmp_path / "keys").iterdir())
    assert record.key_hash.encode() in data  # proves we are looking at the right bytes
    assert secret.encode() not in data
    assert signing_secret is not None and signing_secret.encode() not in data
    assert secret[3:].encode() not in data


async def test_signing_secret_is_returned_once_and_stored_sealed(store):
    record, _, signing_secret = await create(store, signature_required=True)
    assert record.signature_required and record.signing_secret_enc is not None
    assert BOX.decrypt(record.signing_secret_enc, context=record.id) == signing_secret


async def test_revoked_key_is_refused_and_revoking_again_keeps_the_first_revocation(store):
    record, secret, _ = await create(store)
    first = await store.revoke(record.id, NOW, "leaked")
    again = await store.revoke(record.id, NOW + timedelta(hours=1), "cleanup")
    assert (first.revoked, first.revoked_at, first.revoked_reason) == (True, NOW, "leaked")
    assert again == first
    assert (await store.by_hash(hash_secret(secret))) == first
    with pytest.raises(ApiError) as err:
        await Authenticator(store, clock=lambda: NOW).authenticate(secret)
    assert err.value.code == "INVALID_API_KEY"


async def test_revoking_a_static_key_overrides_the_config_and_survives_restarts_and_reloads(tmp_path):
    static = [static_key("static-1", "rk_static_one"), static_key("static-2", "rk_static_two")]
    store = LmdbKeyStore(tmp_path / "keys", static, secret_box=BOX)
    revoked = await store.revoke("static-1", NOW, "left the company")
    assert revoked.revoked and revoked.revoked_at == NOW
    assert (await store.revoke("static-1", NOW + timedelta(days=1), None)).revoked_at == NOW
    store.close()

    restarted = LmdbKeyStore(tmp_path / "keys", static, secret_box=BOX)
    assert (await restarted.by_hash(hash_secret("rk_static_one"))).revoked
    assert not (await restarted.by_hash(hash_secret("rk_static_two"))).revoked
    restarted.replace_static([static_key("static-1", "rk_static_one"), static_key("static-3", "rk_three")])
    assert (await restarted.get("static-1")).revoked_reason == "left the company"
    assert await restarted.by_hash(hash_secret("rk_static_two")) is None
    restarted.close()


async def test_revoking_an_unknown_key_is_not_found(store):
    with pytest.raises(ApiError) as err:
        await store.revoke("key_doesnotexist00", NOW, None)
    assert (err.value.code, err.value.status_code) == ("NOT_FOUND", 404)
    with pytest.raises(ApiError):
        await store.revoke("", NOW, None)


async def test_listing_pages_through_every_key_once_in_creation_order(store):
    created = []
    for i in range(23):
        record, _, _ = await create(
            store, org="org-a" if i % 3 else "org-b", at=NOW + timedelta(seconds=i % 5)
        )
        created.append(record)
    pages, cursor, seen = 0, None, []
    while True:
        items, cursor = await store.list(None, 7, cursor)
        pages += 1
        seen.extend(items)
        assert len(items) <= 7
        if cursor is None:
            break
    expected = sorted(created, key=lambda r: (r.created_at, r.id))
    assert [r.id for r in seen] == ["static-1"] + [r.id for r in expected]  # static keys sort first
    assert pages == 4


async def test_listing_by_organisation_shows_only_its_keys(store):
    for i in range(10):
        await create(store, org="org-a" if i % 2 else "org-b", at=NOW + timedelta(seconds=i))
    items, cursor = await store.list("org-b", 3, None)
    rest, last = await store.list("org-b", 3, cursor)
    assert {r.organization_id for r in items + rest} == {"org-b"}
    assert len(items + rest) == 5 and last is None
    assert (await store.list("org-static", 10, None))[0][0].id == "static-1"
    assert await store.list("org-none", 10, None) == ([], None)


async def test_listing_shows_revocations_and_tolerates_foreign_cursors(store):
    record, _, _ = await create(store)
    await store.revoke(record.id, NOW, None)
    await store.revoke("static-1", NOW, None)
    items, _ = await store.list(None, 10, None)
    assert all(r.revoked for r in items)
    assert await store.list(None, 10, "not-a-cursor") == ([], None)
    assert await store.list(None, 10, "zz") == ([], None)
    far = encode_cursor((2**62, "zzz"))
    assert await store.list(None, 10, far) == ([], None)


async def test_a_cursor_stays_valid_while_keys_are_added(store):
    for i in range(4):
        await create(store, at=NOW + timedelta(seconds=i))
    first, cursor = await store.list(None, 3, None)
    newest, _, _ = await create(store, at=NOW + timedelta(hours=1))
    rest, _ = await store.list(None, 10, cursor)
    assert [r.id for r in rest][-1] == newest.id
    assert not {r.id for r in first} & {r.id for r in rest}


async def test_a_full_store_answers_service_unavailable_and_keeps_what_it_had(tmp_path):
    store = LmdbKeyStore(tmp_path / "small", map_size=64 * 1024)
    kept = []
    with pytest.raises(ApiError) as err:
        for _ in range(1000):
            kept.append((await create(store))[0])
    assert err.value.code == "SERVICE_UNAVAILABLE"
    assert kept and await store.get(kept[-1].id) == kept[-1]
    store.close()


# ---------------------------------------------------------------- several processes

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from router_impl.auth.keys import hash_secret
    from router_impl.auth.store_lmdb import LmdbKeyStore

    async def main():
        store = LmdbKeyStore(Path(sys.argv[1]))
        if sys.argv[2] == "create":
            now = datetime.now(UTC)
            record, secret, _ = await store.create("org-w", None, ["inference"], None, None, False, now)
            print(record.id, secret)
        else:
            record = await store.by_hash(hash_secret(sys.argv[3]))
            print("revoked" if record.revoked else "live")
        store.close()

    asyncio.run(main())
    """
)


def worker(path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]  # the last line: structlog may print before it


async def test_workers_sharing_a_data_dir_see_each_others_writes_at_once(tmp_path):
    path = tmp_path / "shared"
    store = LmdbKeyStore(path)  # stays open, as a long-running worker would
    try:
        key_id, secret = worker(path, "create").split()
        found = await store.by_hash(hash_secret(secret))  # no restart, no cache to expire
        assert found is not None and found.id == key_id
        assert worker(path, "lookup", secret) == "live"
        await store.revoke(key_id, NOW, "from the other worker")
        assert worker(path, "lookup", secret) == "revoked"
    finally:
        store.close()


async def test_lookup_stays_cheap_with_ten_thousand_keys(tmp_path):
    store = LmdbKeyStore(tmp_path / "many")
    secrets_ = []
    for i in range(10_000):
        if i % 1000 == 0:
            secrets_.append((await create(store, at=NOW + timedelta(microseconds=i)))[1])
        else:
            await create(store, at=NOW + timedelta(microseconds=i))
    hashes = [hash_secret(s) for s in secrets_] * 500
    started = time.perf_counter()
    for key_hash in hashes:
        assert await store.by_hash(key_hash) is not None
    per_lookup_us = (time.perf_counter() - started) / len(hashes) * 1e6
    print(f"by_hash with 10,000 keys: {per_lookup_us:.1f} us per lookup")
    assert per_lookup_us < 200  # typically ~10 us; generous for slow CI machines
    store.close()
