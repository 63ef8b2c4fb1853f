"""Seals per-key HMAC signing secrets at rest (AES-256-GCM under a key derived from the master key).

Tokens look like ``v1.<base64url(nonce || ciphertext || tag)>``; the version and an optional
context (the key id) are authenticated too, so a sealed secret cannot be moved to another key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
HKDF_INFO = b"router-impl/secret-box/v1/aes-256-gcm"
NONCE_BYTES = 12
TAG_BYTES = 16
MASTER_KEY_FILE = "secret.key"
MASTER_KEY_BYTES = 32
MIN_MASTER_KEY_BYTES = 16
MIN_SECRET_KEY_CHARS = 32


class SecretBoxError(Exception):
    """A sealed secret could not be opened: malformed, tampered with, or sealed under another key."""


class SecretBox:
    def __init__(self, master_key: bytes, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if len(master_key) < MIN_MASTER_KEY_BYTES:
            raise ValueError(f"the master key needs at least {MIN_MASTER_KEY_BYTES} bytes")
        key = HKDF(algorithm=SHA256(), length=32, salt=None, info=HKDF_INFO).derive(master_key)
        self._aead = AESGCM(key)
        self._random_bytes = random_bytes

    def __repr__(self) -> str:
        return "SecretBox(<sealed>)"

    def encrypt(self, plaintext: str, context: str = "") -> str:
        nonce = self._random_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), _aad(context))
        return f"{VERSION}." + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def decrypt(self, token: str, context: str = "") -> str:
        version, dot, body = token.partition(".")
        if not dot or version != VERSION:
            raise SecretBoxError(f"not a {VERSION} sealed secret")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise SecretBoxError("sealed secret is not valid base64url") from exc
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise SecretBoxError("sealed secret is truncated")
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(context))
        except InvalidTag as exc:
            raise SecretBoxError(
                "sealed secret failed authentication: tampered with, or sealed under another master key"
            ) from exc
        return plain.decode("utf-8")

    @classmethod
    def from_settings(cls, secret_key: str | None, data_dir: Path, *, log: Any = None) -> SecretBox:
        """The box for ROUTER_SECRET_KEY, or for ``data_dir/secret.key`` (created 0600 when absent)."""
        if secret_key is not None:
            if len(secret_key) < MIN_SECRET_KEY_CHARS:
                raise ValueError(f"ROUTER_SECRET_KEY needs at least {MIN_SECRET_KEY_CHARS} characters")
            return cls(secret_key.encode("utf-8"))
        return cls(load_or_create_master_key(data_dir / MASTER_KEY_FILE, log=log))


def _aad(context: str) -> bytes:
    return f"{VERSION}|{context}".encode()


def load_or_create_master_key(path: Path, *, log: Any = None) -> bytes:
    """Reuse the key file, or create it atomically; several workers racing here end up with one key.

    The file is written under a temporary name and hard-linked into place, so a reader never
    sees a half-written key and only the process that won the race logs the warning.
    """
    log = log if log is not None else structlog.get_logger("router.auth")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(MASTER_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another worker won; use its key
            else:
                log.warning("secret_key_generated", path=str(path))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("secret_key_permissions_too_open", path=str(path), mode=oct(mode))
    key = path.read_bytes()
    if len(key) != MASTER_KEY_BYTES:
        # Never regenerate: a new key would make every sealed signing secret unreadable.
        raise ValueError(f"{path} must hold exactly {MASTER_KEY_BYTES} bytes, found {len(key)}")
    return key
