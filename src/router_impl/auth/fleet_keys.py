"""How keys start in a fleet: the bootstrap admin key (a configured hash), the rule for signing
secrets without a shared master key, and the one-time import of keys an older router kept in LMDB."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from router_impl.auth.keys import ApiKeyRecord
from router_impl.auth.store_config import KeyWriter
from router_impl.auth.store_lmdb import read_legacy_keys
from router_impl.config.model import RuntimeConfig
from router_impl.settings import Settings

BOOTSTRAP_KEY_ID = "bootstrap-admin"
_HEX64 = frozenset("0123456789abcdef")


def bootstrap_keys(settings: Settings) -> tuple[ApiKeyRecord, ...]:
    """The bootstrap admin key, when ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256[_FILE] names its hash.
    A file that is missing or holds anything but one SHA-256 hex digest stops the start (ValueError)."""
    digest = settings.bootstrap_admin_key_sha256
    path = settings.bootstrap_admin_key_sha256_file
    if digest is None and path is not None:
        try:
            digest = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256_FILE {path} cannot be read: {exc}") from None
        if len(digest) != 64 or not _HEX64.issuperset(digest.lower()):
            raise ValueError(f"{path} must hold the SHA-256 hex digest of the bootstrap admin key")
    if digest is None:
        return ()
    record = ApiKeyRecord(
        id=BOOTSTRAP_KEY_ID,
        organization_id=settings.bootstrap_admin_org,
        key_hash=digest.lower(),
        scopes=frozenset({"admin"}),
        name="bootstrap admin key (ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256)",
    )
    return (record,)


def signing_refusal(settings: Settings) -> str | None:
    """Why keys with a signing secret cannot be created: in a fleet (etcd) each replica would seal
    with its own generated master key file, and the others could not open the secret."""
    if settings.etcd_endpoints and settings.secret_key is None:
        return (
            "Keys with a signing secret need ROUTER_SECRET_KEY set to the same value on every "
            "replica (e.g. from one Kubernetes Secret); it is not set."
        )
    return None


async def import_legacy_keys(
    path: Path, current: Callable[[], RuntimeConfig], put: KeyWriter, *, log: Any = None
) -> int:
    """Keys an older router created in ``path`` (its LMDB key store) and the config source lacks, and
    its revocations of config keys, are written to the source, so an upgrade loses none and revives
    no revoked key; returns how many objects were written."""
    log = log if log is not None else structlog.get_logger("router.auth")
    records = read_legacy_keys(path, current().api_keys)
    known = {r.id: r for r in current().api_keys}
    hashes = {r.key_hash for r in current().api_keys}
    written = 0
    for record in records:
        held = known.get(record.id)
        if held is None and record.key_hash in hashes:
            continue
        if held is not None and (held.revoked or not record.revoked):
            continue
        try:
            await put("keys", record.id, record)
        except Exception as exc:
            log.warning("legacy_key_not_imported", key_id=record.id, error=type(exc).__name__)
            continue
        written += 1
    if written:
        log.warning("legacy_keys_imported", count=written, path=str(path))
    return written
