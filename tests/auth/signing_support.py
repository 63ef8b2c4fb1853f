"""Signing inputs shared by the signing and signature-gate tests: a fixed moment, a secret, a request
and an inference envelope, and a verifier on the in-memory nonce store at that moment."""

from __future__ import annotations

from datetime import UTC, datetime

from router_impl.auth.nonces import MemoryNonceStore
from router_impl.auth.signing import SignatureVerifier
from tests.harness.clock import WallClock

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


T = int(NOW.timestamp())


SECRET = b"rs_test-signing-secret"


BODY = b'{"model":"m","payload":"hi"}'


PATH = "/v1/inference"

ENVELOPE = {
    "request_id": "3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60",
    "model": "m",
    "payload": "héllo wörld",
    "parameters": {"max_tokens": 64, "temperature": 0.2},
}


def verifier(clock: WallClock | None = None, window: int = 300) -> SignatureVerifier:
    return SignatureVerifier(MemoryNonceStore(), clock or WallClock(NOW), window_seconds=window)
