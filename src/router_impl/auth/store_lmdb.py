"""API keys in LMDB: the embedded KeyStore and ApiKeyAdmin, shared by every worker on one data dir.

Lookups read LMDB directly (no in-process cache), so a key created or revoked by one worker
process is seen by the others on their next request. Static keys from the runtime config are
served from memory; revoking one stores a revocation marker in LMDB that overrides it.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import struct
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb
import structlog
from pydantic import BaseModel, ConfigDict

from router_impl.auth.admin import (
    KeyMinter,
    KeyPage,
    decode_cursor,
    encode_cursor,
    page_limit,
    revoked_copy,
    sort_key,
)
from router_impl.auth.keys import ApiKeyRecord, RandomBytes, Scope
from router_impl.auth.secret_box import SecretBox
from router_impl.errors import ApiError

DEFAULT_MAP_SIZE = 1 << 30
_MAX_LOOKUP_KEY = 128  # ids and hashes are at most this long; LMDB rejects empty or >511-byte keys
_MICROS = struct.Struct(">Q")
_ORG_END = b"\x00"


class _StaticRevocation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    revoked_at: datetime
    reason: str | None = None


class LmdbKeyStore:
    """Sub-databases: ``keys_by_id`` (id -> record JSON), ``keys_by_hash`` (hash -> id),
    ``keys_by_created`` and ``keys_by_org`` (list order indexes), ``static_revocations``.
    """

    def __init__(
        self,
        path: Path,
        static: Iterable[ApiKeyRecord] = (),
        *,
        secret_box: SecretBox | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        random_bytes: RandomBytes = secrets.token_bytes,
        log: Any = None,
    ) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=8, subdir=True, mode=0o600)
        self._by_id = self._env.open_db(b"keys_by_id")
        self._by_hash = self._env.open_db(b"keys_by_hash")
        self._by_created = self._env.open_db(b"keys_by_created")
        self._by_org = self._env.open_db(b"keys_by_org")
        self._static_revoked = self._env.open_db(b"static_revocations")
        self._minter = KeyMinter(secret_box, random_bytes)
        self._log = log if log is not None else structlog.get_logger("router.auth")
        self._static_by_hash: dict[str, ApiKeyRecord] = {}
        self._static_by_id: dict[str, ApiKeyRecord] = {}
        self.replace_static(static)

    def replace_static(self, records: Iterable[ApiKeyRecord]) -> None:
        """Swap in the runtime config's keys (on reload); stored revocations keep applying."""
        records = tuple(records)
        self._static_by_hash = {r.key_hash: r for r in records}
        self._static_by_id = {r.id: r for r in records}

    def close(self) -> None:
        self._env.close()

    # ------------------------------------------------------------------ KeyStore

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        if not 0 < len(key_hash) <= _MAX_LOOKUP_KEY:
            return None
        with self._env.begin() as txn:
            key_id = txn.get(key_hash.encode(), db=self._by_hash)
            if key_id is not None:
                raw = txn.get(key_id, db=self._by_id)
                return None if raw is None else ApiKeyRecord.model_validate_json(raw)
            static = self._static_by_hash.get(key_hash)
            return None if static is None else self._with_static_revocation(txn, static)

    # -------------------------------------------------------------- ApiKeyAdmin

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        if not 0 < len(key_id) <= _MAX_LOOKUP_KEY:
            return None
        with self._env.begin() as txn:
            return self._get(txn, key_id)

    async def create(
        self,
        organization_id: str,
        name: str | None,
        scopes: Iterable[Scope],
        allowed_models: Iterable[str] | None,
        expires_at: datetime | None,
        signature_required: bool,
        now: datetime,
    ) -> tuple[ApiKeyRecord, str, str | None]:
        with self._writing() as txn:
            key_id = self._minter.new_id()
            while key_id in self._static_by_id or txn.get(key_id.encode(), db=self._by_id) is not None:
                key_id = self._minter.new_id()
            new = self._minter.mint(
                key_id, organization_id, name, scopes, allowed_models, expires_at, signature_required, now
            )
            record = new.record
            if not txn.put(record.key_hash.encode(), key_id.encode(), db=self._by_hash, overwrite=False):
                raise ApiError("CONFLICT", "A key with this secret already exists.")
            txn.put(key_id.encode(), record.model_dump_json().encode(), db=self._by_id)
            txn.put(_created_key(record), b"", db=self._by_created)
            txn.put(_org_prefix(organization_id) + _created_key(record), b"", db=self._by_org)
        self._log.info("api_key_created", key_id=key_id, organization_id=organization_id)
        return record, new.secret, new.signing_secret

    async def revoke(self, key_id: str, now: datetime, reason: str | None) -> ApiKeyRecord:
        if not 0 < len(key_id) <= _MAX_LOOKUP_KEY:
            raise ApiError("NOT_FOUND", "No such API key.")
        with self._writing() as txn:
            raw = txn.get(key_id.encode(), db=self._by_id)
            if raw is not None:
                before = ApiKeyRecord.model_validate_json(raw)
                record = revoked_copy(before, now, reason)
                if record is not before:
                    txn.put(key_id.encode(), record.model_dump_json().encode(), db=self._by_id)
            elif key_id in self._static_by_id:
                marker = _StaticRevocation(revoked_at=now, reason=reason).model_dump_json().encode()
                txn.put(key_id.encode(), marker, db=self._static_revoked, overwrite=False)
                record = self._with_static_revocation(txn, self._static_by_id[key_id])
            else:
                raise ApiError("NOT_FOUND", "No such API key.")
        self._log.info("api_key_revoked", key_id=key_id, organization_id=record.organization_id)
        return record

    async def list(self, organization_id: str | None, limit: int, cursor: str | None) -> KeyPage:
        """One page in (created_at, id) order; an unknown cursor yields an empty page."""
        limit = page_limit(limit)
        try:
            after = decode_cursor(cursor)
        except ValueError:
            return [], None
        with self._env.begin() as txn:
            stored = list(itertools.islice(self._stored_after(txn, organization_id, after), limit + 1))
            static = [
                self._with_static_revocation(txn, r)
                for r in sorted(self._static_by_id.values(), key=sort_key)
                if (organization_id is None or r.organization_id == organization_id)
                and (after is None or sort_key(r) > after)
            ][: limit + 1]
        page = list(itertools.islice(heapq.merge(stored, static, key=sort_key), limit + 1))
        if len(page) <= limit:
            return page, None
        return page[:limit], encode_cursor(sort_key(page[limit - 1]))

    def entries(self) -> int:
        """Stored (not static) keys: a cheap readiness probe that LMDB answers."""
        with self._env.begin() as txn:
            return int(txn.stat(self._by_id)["entries"])

    # ----------------------------------------------------------------- internals

    def _get(self, txn: Any, key_id: str) -> ApiKeyRecord | None:
        raw = txn.get(key_id.encode(), db=self._by_id)
        if raw is not None:
            return ApiKeyRecord.model_validate_json(raw)
        static = self._static_by_id.get(key_id)
        return None if static is None else self._with_static_revocation(txn, static)

    def _with_static_revocation(self, txn: Any, record: ApiKeyRecord) -> ApiKeyRecord:
        raw = txn.get(record.id.encode(), db=self._static_revoked)
        if raw is None:
            return record
        marker = _StaticRevocation.model_validate_json(raw)
        return revoked_copy(record, marker.revoked_at, marker.reason)

    def _stored_after(
        self, txn: Any, organization_id: str | None, after: tuple[int, str] | None
    ) -> Iterator[ApiKeyRecord]:
        db = self._by_created if organization_id is None else self._by_org
        prefix = b"" if organization_id is None else _org_prefix(organization_id)
        start = prefix if after is None else prefix + _MICROS.pack(after[0]) + after[1].encode() + b"\x00"
        cursor = txn.cursor(db=db)
        if not cursor.set_range(start):
            return
        for index_key in cursor.iternext(keys=True, values=False):
            if not index_key.startswith(prefix):
                return
            raw = txn.get(index_key[len(prefix) + _MICROS.size :], db=self._by_id)
            if raw is not None:
                yield ApiKeyRecord.model_validate_json(raw)

    def _writing(self) -> Any:
        return _WriteTxn(self._env, self._log)


class _WriteTxn:
    """One write transaction; a full map becomes SERVICE_UNAVAILABLE instead of a bare LMDB error."""

    def __init__(self, env: Any, log: Any) -> None:
        self._env = env
        self._log = log
        self._txn: Any = None

    def __enter__(self) -> Any:
        self._txn = self._env.begin(write=True)
        return self._txn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            self._txn.abort()
            if isinstance(exc, lmdb.MapFullError):
                self._log.error("api_key_store_full")
                raise ApiError("SERVICE_UNAVAILABLE", "The API key store is full.") from exc
            return
        try:
            self._txn.commit()
        except lmdb.MapFullError as full:
            self._log.error("api_key_store_full")
            raise ApiError("SERVICE_UNAVAILABLE", "The API key store is full.") from full


def _created_key(record: ApiKeyRecord) -> bytes:
    micros, key_id = sort_key(record)
    return _MICROS.pack(micros) + key_id.encode()


def _org_prefix(organization_id: str) -> bytes:
    return organization_id.encode() + _ORG_END
