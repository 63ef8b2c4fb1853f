"""HMAC-SHA256 request signatures: verification with a replay window, and the client-side signer.

String to sign: ``f"{timestamp}\\n{METHOD}\\n{path}\\n{sha256_hex(body)}"`` where ``path`` is the
URL path without the query string (as in openapi/router.yaml, parameter X-Signature). The
signature is the lowercase hex HMAC-SHA256 of it under the key's signing secret (UTF-8).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from router_impl.auth.nonces import NonceStore
from router_impl.errors import ApiError

TIMESTAMP_HEADER = "X-Signature-Timestamp"
SIGNATURE_HEADER = "X-Signature"
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


def sign_payload(signing_secret: bytes | str, payload: str) -> str:
    """The ``hmac_signature`` field of ``/v1/inference``: hex HMAC-SHA256 of the UTF-8 payload."""
    # surrogatepass, as in string_to_sign: a payload that is not valid Unicode only fails verification.
    return hmac.new(
        _key(signing_secret), payload.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()


def payload_signature_of(body: bytes) -> tuple[str, str] | None:
    """``(payload, hmac_signature)`` from an InferenceRequest body, when both are strings."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    payload, signature = document.get("payload"), document.get("hmac_signature")
    if isinstance(payload, str) and isinstance(signature, str):
        return payload, signature
    return None


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

    @staticmethod
    def verify_payload_field(signing_secret: bytes, payload: str, hmac_signature: str) -> None:
        """The contract's ``hmac_signature`` field. It carries no timestamp, so no replay window:
        request-id idempotency is what stops a replayed body from being billed twice.
        """
        signature = _parse_signature(hmac_signature)
        if not hmac.compare_digest(sign_payload(signing_secret, payload), signature):
            raise ApiError("SIGNATURE_INVALID")


def nonce_key(key_id: str, signature: str) -> str:
    """Hash-tagged by key id, so one key's nonces stay in one Redis Cluster slot. The signature is
    stored as its SHA-256: a used signature never sits in Redis (or memory) as it was sent."""
    return f"nonce:{{{key_id}}}:{hashlib.sha256(signature.encode()).hexdigest()}"
