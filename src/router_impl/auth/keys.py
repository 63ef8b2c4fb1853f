"""API key records (hashes only, never secrets) and the store port they live behind."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scope = Literal["inference", "audit", "admin"]
SECRET_PREFIX = "rk_"  # noqa: S105 -- a public marker that makes leaked keys greppable, not a secret
MAX_SECRET_LENGTH = 256
SECRET_BYTES = 32
# Base62 keeps a secret's first characters within the contract's `prefix` pattern ([A-Za-z0-9_]).
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_WIDTH = 43  # ceil(256 / log2(62)): every 32-byte value fits, so all secrets have one length

RandomBytes = Callable[[int], bytes]


class ApiKeyRecord(BaseModel):
    """What the router stores about a key. ``key_hash`` is SHA-256 of the secret, hex.

    ``signing_secret_enc`` is the key's HMAC signing secret sealed by ``SecretBox``;
    the plain signing secret is never stored or logged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    organization_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Scope] = Field(min_length=1)
    name: str = ""
    prefix: str = ""
    allowed_models: frozenset[str] | None = None
    expires_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    revoked_reason: str | None = None
    created_at: datetime | None = None
    signature_required: bool = False
    signing_secret_enc: str | None = Field(default=None, repr=False)

    @field_validator("expires_at", "revoked_at", "created_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Times without a zone (e.g. hand-written YAML) are read as UTC, never compared naively."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a secret. Secrets are high-entropy random tokens, so no salt or KDF is needed.

    surrogatepass: text that is not valid Unicode (argv or environment bytes that are not UTF-8)
    must still only fail to match a key, never crash."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def base62(data: bytes, width: int = _BASE62_WIDTH) -> str:
    """``data`` as a fixed-width base62 string (zero-padded on the left)."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits)).rjust(width, _BASE62[0])


def new_secret(random_bytes: RandomBytes = secrets.token_bytes) -> str:
    """A fresh API key: ``rk_`` and 256 random bits in base62 (46 characters)."""
    return SECRET_PREFIX + base62(random_bytes(SECRET_BYTES))


class KeyStore(Protocol):
    """Where keys are looked up. Async: the identity-service adapter answers over the network."""

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...


class InMemoryKeyStore:
    """O(1) lookup by hash over an immutable set of records."""

    def __init__(self, records: Iterable[ApiKeyRecord] = ()) -> None:
        self._by_hash = {r.key_hash: r for r in records}

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        return self._by_hash.get(key_hash)
