"""Keys as config objects: created, revoked and listed through a real config service over a file
source; the bootstrap admin key; the refusal of signing keys without a shared secret key; the
one-time import of keys an older router kept in LMDB."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router_impl.auth.fleet_keys import BOOTSTRAP_KEY_ID, bootstrap_keys, import_legacy_keys, signing_refusal
from router_impl.auth.keys import hash_secret
from router_impl.auth.secret_box import SecretBox
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.config.file_source import FileSource, load_file
from router_impl.config.holder import ConfigHolder
from router_impl.config.model import RuntimeConfig
from router_impl.config.service import ConfigService
from router_impl.errors import ApiError
from router_impl.settings import Settings
from tests.harness.legacy_keys import write_legacy_keys

NOW = datetime.now(UTC)
BOX = SecretBox(b"k" * 32)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[ConfigService, ConfigHolder, Path]]:
    path = tmp_path / "runtime.yaml"
    holder = ConfigHolder(RuntimeConfig())
    service = ConfigService(FileSource(path, 0.02, missing_ok=True), holder, None, clock=lambda: NOW)
    await service.start(within=5)
    yield service, holder, path
    await service.stop()


def store(service: tuple[ConfigService, ConfigHolder, Path], **kwargs: object) -> ConfigKeyStore:
    config_service, holder, _ = service
    return ConfigKeyStore(holder.current, config_service.put, secret_box=BOX, **kwargs)  # type: ignore[arg-type]


async def test_a_created_key_is_a_config_object_holding_only_its_hash(service):
    keys = store(service)
    record, secret, signing = await keys.create("acme", "ci", ["inference"], None, None, True, NOW)
    assert await keys.by_hash(hash_secret(secret)) == record
    written = service[2].read_text()
    assert record.id in written and record.key_hash in written
    assert secret not in written and signing is not None and signing not in written
    assert load_file(service[2]).api_keys == (record,)  # the file source holds the key itself


async def test_a_revoked_key_stays_revoked_and_keeps_its_first_revocation(service):
    keys = store(service)
    record, secret, _ = await keys.create("acme", None, ["inference"], None, None, False, NOW)
    first = await keys.revoke(record.id, NOW, "leaked")
    again = await keys.revoke(record.id, NOW + timedelta(hours=1), "again")
    assert first.revoked and again.revoked_at == first.revoked_at and again.revoked_reason == "leaked"
    found = await keys.by_hash(hash_secret(secret))
    assert found is not None and found.revoked
    with pytest.raises(ApiError) as missing:
        await keys.revoke("key_nope", NOW, None)
    assert missing.value.code == "NOT_FOUND"


async def test_listing_pages_in_creation_order_and_filters_by_organisation(service):
    keys = store(service)
    made = [
        (await keys.create(org, None, ["inference"], None, None, False, NOW + timedelta(seconds=i)))[0]
        for i, org in enumerate(["a", "b", "a", "a"])
    ]
    page, cursor = await keys.list("a", 2, None)
    assert [r.id for r in page] == [made[0].id, made[2].id] and cursor is not None
    rest, end = await keys.list("a", 2, cursor)
    assert [r.id for r in rest] == [made[3].id] and end is None
    assert len((await keys.list(None, 100, None))[0]) == 4


async def test_the_bootstrap_key_is_served_until_its_revocation_in_the_source_overrides_it(service):
    settings = Settings(bootstrap_admin_key_sha256=hash_secret("rk_boot"), _env_file=None)  # type: ignore[call-arg]
    keys = store(service, local=bootstrap_keys(settings))
    boot = await keys.by_hash(hash_secret("rk_boot"))
    assert boot is not None and boot.id == BOOTSTRAP_KEY_ID and boot.scopes == {"admin"}
    await keys.revoke(BOOTSTRAP_KEY_ID, NOW, "first admin created")
    boot = await keys.by_hash(hash_secret("rk_boot"))
    assert boot is not None and boot.revoked
    assert [r.id for r in service[1].current().api_keys] == [BOOTSTRAP_KEY_ID]  # stored as a record


def test_the_bootstrap_hash_can_come_from_a_mounted_file_and_a_bad_file_stops_the_start(tmp_path):
    good = tmp_path / "sha256"
    good.write_text(hash_secret("rk_boot").upper() + "\n")
    settings = Settings(bootstrap_admin_key_sha256_file=good, _env_file=None)  # type: ignore[call-arg]
    assert bootstrap_keys(settings)[0].key_hash == hash_secret("rk_boot")
    bad = tmp_path / "plain"
    bad.write_text("rk_the-secret-itself")
    with pytest.raises(ValueError, match="SHA-256 hex digest") as refused:
        bootstrap_keys(Settings(bootstrap_admin_key_sha256_file=bad, _env_file=None))  # type: ignore[call-arg]
    assert "rk_the-secret-itself" not in str(refused.value)


async def test_a_signing_key_is_refused_in_a_fleet_without_a_shared_secret_key(service):
    fleet = Settings(etcd_endpoints="127.0.0.1:2379", _env_file=None)  # type: ignore[call-arg]
    assert signing_refusal(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    keys = store(service, signing_refusal=signing_refusal(fleet))
    with pytest.raises(ApiError) as refused:
        await keys.create("acme", None, ["inference"], None, None, True, NOW)
    assert refused.value.code == "SERVICE_UNAVAILABLE" and "ROUTER_SECRET_KEY" in str(refused.value.message)
    assert service[1].current().api_keys == ()  # nothing was written
    await keys.create("acme", None, ["inference"], None, None, False, NOW)


async def test_keys_and_revocations_an_older_router_kept_in_lmdb_are_written_to_the_source_once(
    service, tmp_path
):
    config_service, holder, _ = service
    keys = store(service)
    from_file, _, _ = await keys.create("acme", "in the config", ["inference"], None, None, False, NOW)
    old = from_file.model_copy(update={"id": "key_old", "key_hash": hash_secret("rk_old"), "name": "old"})
    # a key the old router created, and its marker revoking a config key
    write_legacy_keys(tmp_path / "keys", [old], {from_file.id: (NOW, "revoked by the old router")})
    assert await import_legacy_keys(tmp_path / "keys", holder.current, config_service.put) == 2
    imported = {r.id: r for r in holder.current().api_keys}
    assert imported[old.id] == old and imported[from_file.id].revoked  # no revoked key comes back
    assert await import_legacy_keys(tmp_path / "keys", holder.current, config_service.put) == 0
