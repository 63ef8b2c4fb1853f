"""Writes an LMDB key store as routers before keys-in-config left it (what the legacy import reads):
stored keys by id, and revocations of config keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import lmdb

from router_impl.auth.keys import ApiKeyRecord
from router_impl.auth.store_lmdb import KEYS_DB, REVOCATIONS_DB, StaticRevocation


def write_legacy_keys(
    path: Path,
    stored: Iterable[ApiKeyRecord] = (),
    revoked_config_keys: Mapping[str, tuple[datetime, str | None]] | None = None,
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), max_dbs=8, subdir=True)
    try:
        keys, revocations = env.open_db(KEYS_DB), env.open_db(REVOCATIONS_DB)
        with env.begin(write=True) as txn:
            for record in stored:
                txn.put(record.id.encode(), record.model_dump_json().encode(), db=keys)
            for key_id, (at, reason) in (revoked_config_keys or {}).items():
                marker = StaticRevocation(revoked_at=at, reason=reason).model_dump_json().encode()
                txn.put(key_id.encode(), marker, db=revocations)
    finally:
        env.close()
