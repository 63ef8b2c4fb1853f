"""The identity service's answers (openapi/external/identity.yaml) and how they become ApiKeyRecords.

Pure: no I/O. Schemas ignore unknown properties, as the contract asks of its clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from router_impl.auth.keys import ApiKeyRecord, Scope
from router_impl.auth.secret_box import SecretBox

MAX_TTL_SECONDS = 86_400


class KeyDescriptor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    organization_id: str
    scopes: list[Scope] = Field(max_length=16)
    allowed_models: list[str] | None = Field(default=None, max_length=256)
    expires_at: datetime | None = None
    revoked: bool
    signature_required: bool
    signing_secret: str | None = Field(default=None, min_length=16, max_length=256, repr=False)


class KeyValidation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    valid: bool
    key: KeyDescriptor | None = None
    cache_ttl_seconds: int = Field(ge=0, le=MAX_TTL_SECONDS)


class Revocation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    revoked_at: datetime


class RevocationList(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    revoked: list[Revocation] = Field(max_length=10_000)
    next_since: str = Field(min_length=1, max_length=64)


@dataclass(frozen=True, slots=True)
class Answer:
    """One cached answer. ``record`` None means "no such key".

    ``stale_until`` bounds fail-static: while the service is unreachable, a valid record is
    served until then (measured from when the service last vouched for it).
    """

    record: ApiKeyRecord | None
    fresh_until: float
    stale_until: float

    def servable_when_down(self, now: float) -> bool:
        return self.record is not None and not self.record.revoked and now < self.stale_until


def record_of(key_hash: str, validation: KeyValidation, box: SecretBox) -> ApiKeyRecord | None:
    """The record for an answer; ValueError when a "valid" answer lacks the key it vouches for.

    A ``valid: false`` key is recorded as revoked (revoked or expired: refused the same way).
    The signing secret is sealed at once (bound to the key id), so the plain secret is
    held only for the duration of this call.
    """
    key = validation.key
    if key is None:
        if validation.valid:
            raise ValueError("a valid answer without its key")
        return None
    return ApiKeyRecord(
        id=key.id,
        organization_id=key.organization_id,
        key_hash=key_hash,
        scopes=frozenset(key.scopes),
        allowed_models=None if key.allowed_models is None else frozenset(key.allowed_models),
        expires_at=key.expires_at,
        revoked=key.revoked or not validation.valid,
        signature_required=key.signature_required,
        signing_secret_enc=(
            None if key.signing_secret is None else box.encrypt(key.signing_secret, context=key.id)
        ),
    )
