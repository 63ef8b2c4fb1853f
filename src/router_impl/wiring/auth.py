"""Wiring of authentication: the key store (the identity service when configured, else keys as
config objects), request signatures and their replay window (Redis when shared), the authenticator."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.fleet_keys import bootstrap_keys, import_legacy_keys, signing_refusal
from router_impl.auth.identity import IdentityServiceKeyStore
from router_impl.auth.keys import KeyStore
from router_impl.auth.nonces import MemoryNonceStore, NonceStore, RedisNonceStore
from router_impl.auth.secret_box import SecretBox
from router_impl.auth.signature_gate import SignatureGate
from router_impl.auth.signing import SignatureVerifier
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.config.service import ConfigService
from router_impl.lifecycle import Lifecycle
from router_impl.settings import Settings, secret_value
from router_impl.wiring.config import ConfigParts
from router_impl.wiring.shared_redis import SharedRedis

log = structlog.get_logger("router.app")


@dataclass(frozen=True)
class AuthParts:
    authenticator: Authenticator
    signatures: SignatureGate
    key_store: ConfigKeyStore | None  # None when an external identity service owns the keys
    identity: IdentityServiceKeyStore | None


def build_auth(
    settings: Settings, lifecycle: Lifecycle, config: ConfigParts, redis: SharedRedis | None
) -> AuthParts:
    box = SecretBox.from_settings(secret_value(settings.secret_key), settings.data_dir)
    identity: IdentityServiceKeyStore | None = None
    key_store: ConfigKeyStore | None = None
    store: KeyStore
    if settings.identity_url:
        identity = _identity(settings, lifecycle, box)
        store = identity
    else:
        key_store = _config_keys(settings, lifecycle, config, box)
        store = key_store
    signatures = SignatureGate(
        box, SignatureVerifier(_nonces(settings, redis), window_seconds=settings.signature_window_seconds)
    )
    return AuthParts(Authenticator(store), signatures, key_store, identity)


def _identity(settings: Settings, lifecycle: Lifecycle, box: SecretBox) -> IdentityServiceKeyStore:
    identity = IdentityServiceKeyStore(
        settings.identity_url or "",
        secret_value(settings.identity_token) or "",
        secret_box=box,
        positive_ttl=settings.identity_positive_ttl_seconds,
        negative_ttl=settings.identity_negative_ttl_seconds,
        stale_window=settings.identity_stale_window_seconds,
        timeout=settings.identity_timeout_seconds,
    )
    poll = settings.identity_revocation_poll_seconds
    lifecycle.background(lambda: identity.follow_revocations(poll))
    lifecycle.on_stop(identity.close)
    return identity


def _config_keys(
    settings: Settings, lifecycle: Lifecycle, config: ConfigParts, box: SecretBox
) -> ConfigKeyStore:
    """Keys are config objects (keys/<id>): every replica follows the same source."""
    service: ConfigService = config.service
    keys = ConfigKeyStore(
        config.holder.current,
        service.put,
        secret_box=box,
        local=bootstrap_keys(settings),
        signing_refusal=signing_refusal(settings),
    )
    legacy_keys = settings.data_dir / "keys"  # where routers before keys-in-config kept them

    async def import_keys() -> None:
        await import_legacy_keys(legacy_keys, config.holder.current, service.put)

    lifecycle.on_start(import_keys)
    return keys


def _nonces(settings: Settings, redis: SharedRedis | None) -> NonceStore:
    if redis is not None:
        return RedisNonceStore(redis.client)
    if settings.workers > 1:
        log.warning(
            "signature_replay_window_per_worker", workers=settings.workers, hint="set ROUTER_REDIS_URL"
        )
    return MemoryNonceStore(settings.nonce_max_entries)
