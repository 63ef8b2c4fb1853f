"""Turns a presented secret into a Principal, or refuses it; checks scopes and allowed models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from router_impl.auth.keys import MAX_SECRET_LENGTH, KeyStore, Scope, hash_secret
from router_impl.errors import ApiError


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    organization_id: str
    scopes: frozenset[Scope]
    allowed_models: frozenset[str] | None
    signature_required: bool
    # Sealed by SecretBox and bound to key_id; SignatureGate opens it only to verify a signature.
    signing_secret_enc: str | None = field(default=None, repr=False)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Authenticator:
    def __init__(self, store: KeyStore, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.clock = clock

    async def authenticate(self, secret: str) -> Principal:
        """Unknown, expired and revoked keys all fail the same way, so callers learn nothing."""
        secret = secret.strip()
        if not secret or len(secret) > MAX_SECRET_LENGTH:
            raise ApiError("INVALID_API_KEY")
        record = await self.store.by_hash(hash_secret(secret))
        if record is None or record.revoked:
            raise ApiError("INVALID_API_KEY")
        if record.expires_at is not None and record.expires_at <= self.clock():
            raise ApiError("INVALID_API_KEY")
        return Principal(
            key_id=record.id,
            organization_id=record.organization_id,
            scopes=record.scopes,
            allowed_models=record.allowed_models,
            signature_required=record.signature_required,
            signing_secret_enc=record.signing_secret_enc,
        )

    @staticmethod
    def authorize(principal: Principal, scope: str | None) -> None:
        if scope is not None and scope not in principal.scopes:
            raise ApiError("FORBIDDEN", f"This operation needs the '{scope}' scope.")

    @staticmethod
    def authorize_model(principal: Principal, model: str, requested: str | None = None) -> None:
        """A key with ``allowed_models`` may use only those; listing the name the client asked for
        (an alias) allows it as well as listing the canonical ``model``.
        """
        allowed = principal.allowed_models
        if allowed is None or model in allowed or (requested is not None and requested in allowed):
            return
        raise ApiError("MODEL_NOT_ALLOWED", f"This API key may not use the model '{requested or model}'.")
