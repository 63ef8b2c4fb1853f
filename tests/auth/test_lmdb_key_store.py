"""The legacy LMDB key store's reader: what routers before keys-in-config stored is read back whole."""

from datetime import UTC, datetime

import lmdb

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.auth.store_lmdb import read_legacy_keys
from tests.harness.legacy_keys import write_legacy_keys

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def key(key_id: str, **extra: object) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        organization_id="org-a",
        key_hash=hash_secret(f"rk_{key_id}"),
        scopes={"inference"},
        **extra,
    )


def test_stored_keys_and_revocations_of_config_keys_are_read(tmp_path):
    stored = [key("made-1"), key("made-2", revoked=True, revoked_at=NOW, revoked_reason="rotated")]
    write_legacy_keys(tmp_path / "keys", stored, {"config-1": (NOW, "left"), "gone": (NOW, None)})
    found = read_legacy_keys(tmp_path / "keys", [key("config-1"), key("config-2")])
    by_id = {r.id: r for r in found}
    assert set(by_id) == {
        "made-1",
        "made-2",
        "config-1",
    }  # a revocation of a key no longer configured is moot
    assert by_id["made-1"] == stored[0] and by_id["made-2"] == stored[1]
    assert by_id["config-1"].revoked and by_id["config-1"].revoked_reason == "left"
    assert by_id["config-1"].revoked_at == NOW


def test_no_store_or_an_empty_one_reads_as_no_keys(tmp_path):
    assert read_legacy_keys(tmp_path / "absent", [key("config-1")]) == []
    lmdb.open(str(tmp_path / "empty"), max_dbs=8).close()  # created, never written
    assert read_legacy_keys(tmp_path / "empty", [key("config-1")]) == []


def test_reading_leaves_the_store_unchanged(tmp_path):
    write_legacy_keys(tmp_path / "keys", [key("made-1")])
    before = {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir()}
    read_legacy_keys(tmp_path / "keys", [])
    assert {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir()} == before
