"""Key management: the ApiKeyAdmin port, minting new keys, and the opaque list cursor."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from router_impl.auth.keys import ApiKeyRecord, RandomBytes, Scope, base62, hash_secret, new_secret
from router_impl.auth.secret_box import SecretBox
from router_impl.errors import ApiError

SIGNING_SECRET_PREFIX = "rs_"  # noqa: S105 -- a public marker, not a secret
PREFIX_LENGTH = 12
MAX_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (records, next_cursor); an alias because a method named `list` shadows the builtin in the Protocol.
KeyPage = tuple[list[ApiKeyRecord], str | None]


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: the record to store, and the secrets shown to the caller once."""

    record: ApiKeyRecord
    secret: str
    signing_secret: str | None

    def __repr__(self) -> str:
        return f"NewKey(id={self.record.id!r})"


class ApiKeyAdmin(Protocol):
    """Create, list, revoke and read keys. Secrets leave only through ``create``'s return value."""

    async def create(
        self,
        organization_id: str,
        name: str | None,
        scopes: Iterable[Scope],
        allowed_models: Iterable[str] | None,
        expires_at: datetime | None,
        signature_required: bool,
        now: datetime,
    ) -> tuple[ApiKeyRecord, str, str | None]: ...

    async def list(self, organization_id: str | None, limit: int, cursor: str | None) -> KeyPage: ...

    async def revoke(self, key_id: str, now: datetime, reason: str | None) -> ApiKeyRecord: ...

    async def get(self, key_id: str) -> ApiKeyRecord | None: ...


class KeyMinter:
    """Makes a new key: random id, secret, and (when asked) a signing secret sealed by the box."""

    def __init__(self, secret_box: SecretBox | None, random_bytes: RandomBytes = secrets.token_bytes) -> None:
        self._box = secret_box
        self._random_bytes = random_bytes

    def new_id(self) -> str:
        """A random UUID (v4), as the platform's usage records require; ids minted before
        (``key_`` + 16 hex digits) stay valid wherever a key id is looked up."""
        return str(uuid.UUID(bytes=self._random_bytes(16), version=4))

    def mint(
        self,
        key_id: str,
        organization_id: str,
        name: str | None,
        scopes: Iterable[Scope],
        allowed_models: Iterable[str] | None,
        expires_at: datetime | None,
        signature_required: bool,
        now: datetime,
    ) -> NewKey:
        secret = new_secret(self._random_bytes)
        signing_secret: str | None = None
        sealed: str | None = None
        if signature_required:
            if self._box is None:
                raise ApiError("INTERNAL_ERROR", "No secret box is configured to seal signing secrets.")
            signing_secret = SIGNING_SECRET_PREFIX + base62(self._random_bytes(32))
            sealed = self._box.encrypt(signing_secret, context=key_id)
        record = ApiKeyRecord(
            id=key_id,
            organization_id=organization_id,
            key_hash=hash_secret(secret),
            scopes=frozenset(scopes),
            name=name or "",
            prefix=secret[:PREFIX_LENGTH],
            allowed_models=None if allowed_models is None else frozenset(allowed_models),
            expires_at=expires_at,
            created_at=now,
            signature_required=signature_required,
            signing_secret_enc=sealed,
        )
        return NewKey(record, secret, signing_secret)


def revoked_copy(record: ApiKeyRecord, now: datetime, reason: str | None) -> ApiKeyRecord:
    """The record revoked at ``now``; revoking again keeps the first instant and reason."""
    if record.revoked and record.revoked_at is not None:
        return record
    return record.model_copy(update={"revoked": True, "revoked_at": now, "revoked_reason": reason})


def page_limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


def created_micros(record: ApiKeyRecord) -> int:
    """Sort position of a record; keys without a creation time (static config) sort first."""
    created = record.created_at or _EPOCH
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    delta = created - _EPOCH
    return max(0, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def sort_key(record: ApiKeyRecord) -> tuple[int, str]:
    return created_micros(record), record.id


def encode_cursor(position: tuple[int, str]) -> str:
    """Hex keeps the cursor inside the contract's pattern ``[A-Za-z0-9._~=-]``."""
    micros, key_id = position
    return f"{micros}|{key_id}".encode().hex()


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    """The position after which a page starts; ValueError for a cursor we never issued."""
    if cursor is None:
        return None
    micros, bar, key_id = bytes.fromhex(cursor).decode("utf-8").partition("|")
    if not bar or not micros.isdigit() or not key_id:
        raise ValueError("not a key-list cursor")
    position = int(micros)
    if position >= 2**64:  # stored positions are unsigned 64-bit microseconds
        raise ValueError("not a key-list cursor")
    return position, key_id
