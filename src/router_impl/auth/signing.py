"""HMAC-SHA256 request signatures: verification with a replay window, and the client-side signer.

String to sign: ``f"{timestamp}\\n{METHOD}\\n{path}\\n{sha256_hex(body)}"`` where ``path`` is the
URL path without the query string (as in openapi/router.yaml, parameter X-Signature). The
signature is the lowercase hex HMAC-SHA256 of it under the key's signing secret (UTF-8).

The body alternative on /v1/inference (``hmac_signature``) is the HMAC of the canonical JSON
(RFC 8785) of the whole body without ``hmac_signature``, which must carry ``hmac_timestamp``: so it
binds request id, model, parameters, payload, content type and metadata, and has the same window
and single use as the headers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router_impl.auth.canonical_json import canonical_json
from router_impl.auth.nonces import NonceStore
from router_impl.errors import ApiError

TIMESTAMP_HEADER = "X-Signature-Timestamp"
SIGNATURE_HEADER = "X-Signature"
BODY_SIGNATURE_FIELD = "hmac_signature"
BODY_TIMESTAMP_FIELD = "hmac_timestamp"
DEFAULT_WINDOW_SECONDS = 300
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _key(signing_secret: bytes | str) -> bytes:
    return signing_secret.encode("utf-8") if isinstance(signing_secret, str) else signing_secret


def string_to_sign(timestamp: int, method: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    # surrogatepass: a path that is not valid Unicode must still only fail verification, never crash.
    return f"{timestamp}\n{method.upper()}\n{path}\n{digest}".encode("utf-8", "surrogatepass")


def sign_request(
    signing_secret: bytes | str, method: str, path: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The two headers a client sends with a signed request."""
    mac = hmac.new(_key(signing_secret), string_to_sign(timestamp, method, path, body), hashlib.sha256)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: mac.hexdigest()}


def body_string_to_sign(document: Mapping[str, Any]) -> bytes:
    """Canonical JSON (RFC 8785) of the body without ``hmac_signature``; ValueError if not JSON."""
    return canonical_json(_unsigned(document))


def _unsigned(document: Mapping[str, Any]) -> dict[str, Any]:
    unsigned = dict(document)
    unsigned.pop(BODY_SIGNATURE_FIELD, None)
    return unsigned


def sign_body(signing_secret: bytes | str, document: Mapping[str, Any], timestamp: int) -> dict[str, Any]:
    """The /v1/inference body to send: ``document`` with ``hmac_timestamp`` and ``hmac_signature``."""
    signed = _unsigned(document)
    signed[BODY_TIMESTAMP_FIELD] = timestamp
    mac = hmac.new(_key(signing_secret), body_string_to_sign(signed), hashlib.sha256)
    return {**signed, BODY_SIGNATURE_FIELD: mac.hexdigest()}


@dataclass(frozen=True, slots=True)
class BodySignature:
    """A /v1/inference body that carries ``hmac_signature``, parsed once."""

    document: Mapping[str, Any] = field(repr=False)
    signature: str = field(repr=False)


def body_signature_of(body: bytes) -> BodySignature | None:
    """The body's signature, when it is a JSON object whose ``hmac_signature`` is a string (anything
    else there fails the body's validation)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    signature = document.get(BODY_SIGNATURE_FIELD)
    return BodySignature(document, signature) if isinstance(signature, str) else None


def _parse_signature(value: str) -> str:
    candidate = value.strip().lower()
    if not _HEX_SIGNATURE.fullmatch(candidate):
        raise ApiError("SIGNATURE_INVALID")
    return candidate


class SignatureVerifier:
    """Checks signature headers; remembers each accepted signature (per key) for twice the window."""

    def __init__(
        self,
        nonces: NonceStore,
        clock: Callable[[], datetime] = utc_now,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self._nonces = nonces
        self._clock = clock
        self.window_seconds = window_seconds

    async def verify_headers(
        self,
        key_id: str,
        signing_secret: bytes,
        method: str,
        path: str,
        body: bytes,
        timestamp_header: str | None,
        signature_header: str | None,
    ) -> None:
        """Raise ApiError(SIGNATURE_MISSING | SIGNATURE_INVALID | SIGNATURE_EXPIRED | SIGNATURE_REPLAYED)."""
        if not timestamp_header or not signature_header:
            raise ApiError("SIGNATURE_MISSING")
        stamp = timestamp_header.strip()
        if not _TIMESTAMP.fullmatch(stamp):
            raise ApiError("SIGNATURE_INVALID", "The signature timestamp must be integer unix seconds.")
        timestamp = int(stamp)
        signature = _parse_signature(signature_header)
        skew = abs(self._clock().timestamp() - timestamp)
        if skew > self.window_seconds:
            raise ApiError("SIGNATURE_EXPIRED")
        expected = sign_request(signing_secret, method, path, body, timestamp)[SIGNATURE_HEADER]
        if not hmac.compare_digest(expected, signature):
            raise ApiError("SIGNATURE_INVALID")
        # Only genuine signatures are remembered, so garbage cannot fill the nonce store.
        if not await self._nonces.first_use(nonce_key(key_id, signature), 2 * self.window_seconds):
            raise ApiError("SIGNATURE_REPLAYED")

    async def verify_body(self, key_id: str, signing_secret: bytes, signed: BodySignature) -> None:
        """The contract's ``hmac_signature`` field over the whole body, with ``hmac_timestamp`` in it.
        Raise ApiError(SIGNATURE_INVALID | SIGNATURE_EXPIRED | SIGNATURE_REPLAYED)."""
        signature = _parse_signature(signed.signature)
        timestamp = signed.document.get(BODY_TIMESTAMP_FIELD)
        if type(timestamp) is not int or not 0 <= timestamp < 10**12:
            raise ApiError(
                "SIGNATURE_INVALID",
                "hmac_signature covers the whole body and needs hmac_timestamp (integer unix seconds).",
            )
        if abs(self._clock().timestamp() - timestamp) > self.window_seconds:
            raise ApiError("SIGNATURE_EXPIRED")
        try:
            signed_bytes = body_string_to_sign(signed.document)
        except ValueError:
            raise ApiError("SIGNATURE_INVALID") from None
        expected = hmac.new(signing_secret, signed_bytes, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise ApiError("SIGNATURE_INVALID")
        if not await self._nonces.first_use(nonce_key(key_id, signature), 2 * self.window_seconds):
            raise ApiError("SIGNATURE_REPLAYED")


def nonce_key(key_id: str, signature: str) -> str:
    """Hash-tagged by key id, so one key's nonces stay in one Redis Cluster slot. The signature is
    stored as its SHA-256: a used signature never sits in Redis (or memory) as it was sent."""
    return f"nonce:{{{key_id}}}:{hashlib.sha256(signature.encode()).hexdigest()}"
