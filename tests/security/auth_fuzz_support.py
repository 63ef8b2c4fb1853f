"""Inputs and real components for the auth fuzz tests: a fixed clock, key and signing secret, Hypothesis
strategies for hostile text (every code point, lone surrogates, odd whitespace, huge values, non-ASCII
digits), and an Authenticator, SignatureVerifier and signing principal built on them."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from connexion.security import AbstractSecurityHandler
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.auth.keys import (
    ApiKeyRecord,
    InMemoryKeyStore,
    hash_secret,
)
from router_impl.auth.nonces import MemoryNonceStore
from router_impl.auth.secret_box import SecretBox
from router_impl.auth.signing import (
    SignatureVerifier,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
KEY = "rk_fuzzKey0123456789abcdefghijklmnopqrstuvwxyzAB"
KEY_ID = "key_fuzz"
SIGNING_SECRET = "rs_fuzz-signing-secret-0123456789"
BOX = SecretBox(b"m" * 32, random_bytes=lambda n: b"\x07" * n)
SIGNATURE_ERRORS = {"SIGNATURE_MISSING", "SIGNATURE_INVALID", "SIGNATURE_EXPIRED", "SIGNATURE_REPLAYED"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates included: text a caller of these functions could hand over.
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=80)
# What str.strip() and str.split() take for whitespace, ASCII and not (bytes.split knows only ASCII).
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000"]
SPACING = st.lists(st.sampled_from(WHITESPACE), max_size=3).map("".join)
# ... and near misses: a zero-width space is no whitespace, NUL is no separator.
NEAR_SPACING = st.lists(st.sampled_from([*WHITESPACE, "\u200b", "\x00"]), max_size=3).map("".join)
HUGE_TEXT = st.tuples(st.text(ANY_CHAR, min_size=1, max_size=3), st.integers(1_000, 70_000)).map(
    lambda part: part[0] * part[1]
)
FUZZ_TEXT = st.one_of(ANY_TEXT, HUGE_TEXT, st.text(st.characters(max_codepoint=0xFF), max_size=80))
HEADER_BYTES = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=1, max_size=3).flatmap(lambda b: st.integers(1_000, 70_000).map(lambda n: b * n)),
)
BEARER = st.lists(st.booleans(), min_size=6, max_size=6).map(
    lambda upper: "".join(c.upper() if u else c for c, u in zip("bearer", upper, strict=True))
)
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
IDENTIFIER = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
# Decimal digits outside ASCII (Arabic-Indic, fullwidth, superscript two): isdigit() says yes, the
# signature timestamp must say no.
NON_ASCII_DIGITS = "".join(map(chr, [*range(0x660, 0x66A), *range(0xFF10, 0xFF1A), 0xB2]))
DIGITS = st.text(st.sampled_from("0123456789" + NON_ASCII_DIGITS), min_size=1, max_size=14)


def from_base62(digits: str) -> int:
    return sum(BASE62.index(digit) * 62**power for power, digit in enumerate(reversed(digits)))


def fuzz_authenticator() -> Authenticator:
    record = ApiKeyRecord(
        id=KEY_ID, organization_id="org-fuzz", key_hash=hash_secret(KEY), scopes={"inference"}
    )
    return Authenticator(InMemoryKeyStore([record]), clock=lambda: NOW)


def fuzz_verifier() -> SignatureVerifier:
    return SignatureVerifier(MemoryNonceStore(), lambda: NOW, window_seconds=300)


def fuzz_principal(*, signature_required: bool = True) -> Principal:
    return Principal(
        key_id=KEY_ID,
        organization_id="org-fuzz",
        scopes=frozenset({"inference"}),
        allowed_models=None,
        signature_required=signature_required,
        signing_secret_enc=BOX.encrypt(SIGNING_SECRET, context=KEY_ID),
    )


def one_byte_changed(data: bytes, index: int, value: int) -> bytes:
    index %= len(data)
    if data[index] == value:
        value = (value + 1) % 256
    return data[:index] + bytes([value]) + data[index + 1 :]


def connexion_authorization(value: bytes) -> tuple[str | None, str | None]:
    """How Connexion's Bearer scheme reads the header Starlette decoded (latin-1)."""
    request = SimpleNamespace(headers={"Authorization": value.decode("latin-1")})
    return AbstractSecurityHandler.get_auth_header_value(request)
