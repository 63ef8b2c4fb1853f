"""API keys in the runtime config (``keys/<id>`` objects): one truth for the whole fleet.

A key created or revoked on one replica is written through the config source (etcd, or the config
file), which every replica follows; lookups read this replica's applied snapshot, indexed once per
snapshot. The config's last-known-good LMDB cache keeps keys across a source outage. Process-local
keys (the bootstrap admin key) are served unless the config holds a record with the same id, so
revoking one writes its revoked record to the source and every replica honours it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel

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
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigConflict, ConfigInvalid, ObjectKind, SourceUnavailable
from router_impl.errors import ApiError

KeyWriter = Callable[[ObjectKind, str, BaseModel], Awaitable[int]]
_ID_ATTEMPTS = 8


class _Index:
    """The keys one snapshot serves, by hash and by id (local keys the snapshot does not shadow)."""

    def __init__(self, config: RuntimeConfig, local: tuple[ApiKeyRecord, ...]) -> None:
        self.config = config
        self.by_id = {r.id: r for r in config.api_keys}
        hashes = {r.key_hash for r in config.api_keys}
        for record in local:
            if record.id not in self.by_id and record.key_hash not in hashes:
                self.by_id[record.id] = record
        self.by_hash = {r.key_hash: r for r in self.by_id.values()}
        self.ordered = sorted(self.by_id.values(), key=sort_key)


class ConfigKeyStore:
    """KeyStore and ApiKeyAdmin over the runtime config. ``write`` puts one config object and waits
    until this replica applied it (``ConfigService.put``); ``signing_refusal`` is why keys with a
    signing secret cannot be created here (e.g. a fleet without a shared ROUTER_SECRET_KEY)."""

    def __init__(
        self,
        config: Callable[[], RuntimeConfig],
        write: KeyWriter,
        *,
        secret_box: SecretBox | None,
        local: Iterable[ApiKeyRecord] = (),
        signing_refusal: str | None = None,
        random_bytes: RandomBytes = secrets.token_bytes,
        log: Any = None,
    ) -> None:
        self._config = config
        self._write = write
        self._minter = KeyMinter(secret_box, random_bytes)
        self._local = tuple(local)
        self._signing_refusal = signing_refusal
        self._log = log if log is not None else structlog.get_logger("router.auth")
        self._index = _Index(RuntimeConfig(), self._local)

    def _current(self) -> _Index:
        config = self._config()
        index = self._index
        if index.config is not config:  # a new snapshot: index it once
            index = self._index = _Index(config, self._local)
        return index

    # ------------------------------------------------------------------ KeyStore

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        return self._current().by_hash.get(key_hash)

    def records(self) -> list[ApiKeyRecord]:
        """Every key this replica serves now, local ones included (readiness counts the usable ones)."""
        return list(self._current().by_id.values())

    # -------------------------------------------------------------- ApiKeyAdmin

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._current().by_id.get(key_id)

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
        if signature_required and self._signing_refusal is not None:
            raise ApiError("SERVICE_UNAVAILABLE", self._signing_refusal)
        index = self._current()
        key_id = self._minter.new_id()
        for _ in range(_ID_ATTEMPTS):
            if key_id not in index.by_id:
                break
            key_id = self._minter.new_id()
        new = self._minter.mint(
            key_id, organization_id, name, scopes, allowed_models, expires_at, signature_required, now
        )
        await self._put(new.record)
        self._log.info("api_key_created", key_id=key_id, organization_id=organization_id)
        return new.record, new.secret, new.signing_secret

    async def revoke(self, key_id: str, now: datetime, reason: str | None) -> ApiKeyRecord:
        before = self._current().by_id.get(key_id)
        if before is None:
            raise ApiError("NOT_FOUND", "No such API key.")
        record = revoked_copy(before, now, reason)
        if record is not before:
            await self._put(record)
            self._log.info("api_key_revoked", key_id=key_id, organization_id=record.organization_id)
        return record

    async def list(self, organization_id: str | None, limit: int, cursor: str | None) -> KeyPage:
        """One page in (created_at, id) order; an unknown cursor yields an empty page."""
        limit = page_limit(limit)
        try:
            after = decode_cursor(cursor)
        except ValueError:
            return [], None
        page: list[ApiKeyRecord] = []
        for record in self._current().ordered:
            if organization_id is not None and record.organization_id != organization_id:
                continue
            if after is not None and sort_key(record) <= after:
                continue
            page.append(record)
            if len(page) > limit:
                return page[:limit], encode_cursor(sort_key(page[limit - 1]))
        return page, None

    async def _put(self, record: ApiKeyRecord) -> None:
        try:
            await self._write("keys", record.id, record)
        except (SourceUnavailable, ConfigConflict) as exc:
            raise ApiError("SERVICE_UNAVAILABLE", f"The key could not be stored: {exc}"[:500]) from exc
        except ConfigInvalid as exc:
            listed = "; ".join(f"{k}: {v}" for k, v in sorted(exc.problems.items()))
            raise ApiError("CONFLICT", f"The key could not be stored: {listed}"[:500]) from exc
