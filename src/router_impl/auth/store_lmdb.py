"""Reads the LMDB key store of routers from before keys lived in the runtime config (a one-time
import at start, ``fleet_keys.import_legacy_keys``); nothing writes it any more.

Layout, as those routers wrote it: sub-database ``keys_by_id`` (id -> record JSON) holds the keys
created through the admin API; ``static_revocations`` (id -> revoked_at, reason) the revocations of
keys that came from the config file. Their list indexes are not needed to read every key.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import lmdb
from pydantic import BaseModel, ConfigDict

from router_impl.auth.admin import revoked_copy
from router_impl.auth.keys import ApiKeyRecord

KEYS_DB = b"keys_by_id"
REVOCATIONS_DB = b"static_revocations"


class StaticRevocation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    revoked_at: datetime
    reason: str | None = None


def read_legacy_keys(path: Path, config_keys: Iterable[ApiKeyRecord]) -> list[ApiKeyRecord]:
    """The keys stored in ``path``, and ``config_keys`` that it holds a revocation of (revoked)."""
    if not (path / "data.mdb").exists():
        return []
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8, subdir=True)
    try:
        with env.begin() as txn:
            stored = _values(env, txn, KEYS_DB)
            revocations = dict(_items(env, txn, REVOCATIONS_DB))
    finally:
        env.close()
    records = [ApiKeyRecord.model_validate_json(raw) for raw in stored]
    for key in config_keys:
        marker = revocations.get(key.id.encode())
        if marker is not None:
            revocation = StaticRevocation.model_validate_json(marker)
            records.append(revoked_copy(key, revocation.revoked_at, revocation.reason))
    return records


def _items(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes) -> list[tuple[bytes, bytes]]:
    try:
        db = env.open_db(name, txn=txn, create=False)
    except lmdb.NotFoundError:  # a store that never held such an entry
        return []
    return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db).iternext(keys=True, values=True)]


def _values(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes) -> list[bytes]:
    return [value for _, value in _items(env, txn, name)]
