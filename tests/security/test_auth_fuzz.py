"""Hypothesis fuzz of API-key and HMAC parsing: any input ends in a documented 401, never a crash.

The real code is driven: the fast lane's header reader and Connexion's, the Authenticator, the
SignatureVerifier and SignatureGate, the SecretBox and the key minter. Inputs include text that is
not valid Unicode (lone surrogates), non-ASCII digits and whitespace, huge values and "Bearer" in
any case. A static check keeps key material out of `==`: comparisons go through compare_digest.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from connexion.exceptions import OAuthProblem
from connexion.security import AbstractSecurityHandler
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import router_impl
from router_impl.auth.admin import PREFIX_LENGTH, KeyMinter, decode_cursor, encode_cursor
from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.auth.keys import (
    SECRET_PREFIX,
    ApiKeyRecord,
    InMemoryKeyStore,
    base62,
    hash_secret,
)
from router_impl.auth.nonces import MemoryNonceStore
from router_impl.auth.secret_box import SecretBox, SecretBoxError
from router_impl.auth.signature_gate import SignatureGate, SignedRequest
from router_impl.auth.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BodySignature,
    SignatureVerifier,
    body_signature_of,
    sign_body,
    sign_request,
)
from router_impl.errors import ApiError
from router_impl.web.middleware.fast_lane import _credential

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


def _from_base62(digits: str) -> int:
    return sum(BASE62.index(digit) * 62**power for power, digit in enumerate(reversed(digits)))


def _authenticator() -> Authenticator:
    record = ApiKeyRecord(
        id=KEY_ID, organization_id="org-fuzz", key_hash=hash_secret(KEY), scopes={"inference"}
    )
    return Authenticator(InMemoryKeyStore([record]), clock=lambda: NOW)


def _verifier() -> SignatureVerifier:
    return SignatureVerifier(MemoryNonceStore(), lambda: NOW, window_seconds=300)


def _principal(*, signature_required: bool = True) -> Principal:
    return Principal(
        key_id=KEY_ID,
        organization_id="org-fuzz",
        scopes=frozenset({"inference"}),
        allowed_models=None,
        signature_required=signature_required,
        signing_secret_enc=BOX.encrypt(SIGNING_SECRET, context=KEY_ID),
    )


def _one_byte_changed(data: bytes, index: int, value: int) -> bytes:
    index %= len(data)
    if data[index] == value:
        value = (value + 1) % 256
    return data[:index] + bytes([value]) + data[index + 1 :]


def _connexion_authorization(value: bytes) -> tuple[str | None, str | None]:
    """How Connexion's Bearer scheme reads the header Starlette decoded (latin-1)."""
    request = SimpleNamespace(headers={"Authorization": value.decode("latin-1")})
    return AbstractSecurityHandler.get_auth_header_value(request)


# ---------------------------------------------------------------- API keys


@FUZZ
@given(presented=FUZZ_TEXT)
@example(presented="\ud800")
@example(presented=KEY + "\x00")
async def test_any_presented_key_is_refused_as_invalid_api_key_unless_it_is_the_key(presented):
    try:
        principal = await _authenticator().authenticate(presented)
    except ApiError as err:
        assert (err.code, err.status_code) == ("INVALID_API_KEY", 401)
        assert presented.strip() != KEY
    else:
        assert presented.strip() == KEY
        assert principal.key_id == KEY_ID


@FUZZ
@given(before=SPACING, after=SPACING)
async def test_the_key_is_accepted_with_any_surrounding_whitespace(before, after):
    assert (await _authenticator().authenticate(before + KEY + after)).key_id == KEY_ID


@FUZZ
@given(before=NEAR_SPACING, after=NEAR_SPACING)
async def test_the_key_next_to_characters_that_are_not_whitespace_is_refused(before, after):
    presented = before + KEY + after
    if presented.strip() == KEY:
        return
    with pytest.raises(ApiError) as err:
        await _authenticator().authenticate(presented)
    assert err.value.code == "INVALID_API_KEY"


@FUZZ
@given(index=st.integers(0, len(KEY) - 1), value=st.integers(0, 255))
async def test_any_single_byte_change_to_the_key_is_refused(index, value):
    changed = _one_byte_changed(KEY.encode(), index, value).decode("latin-1")  # as Starlette decodes it
    with pytest.raises(ApiError) as err:
        await _authenticator().authenticate(changed)
    assert err.value.code == "INVALID_API_KEY"


@FUZZ
@given(random=st.binary(min_size=64, max_size=64), signature_required=st.booleans())
async def test_minted_key_splits_into_id_prefix_and_secret_that_round_trip(random, signature_required):
    stream = iter(random)
    minter = KeyMinter(BOX, random_bytes=lambda n: bytes(next(stream, 0) for _ in range(n)))
    key_id = minter.new_id()
    new = minter.mint(key_id, "org-a", None, ["inference"], None, None, signature_required, NOW)
    secret = new.secret
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 43
    assert new.record.prefix == secret[:PREFIX_LENGTH] and re.fullmatch(
        r"[A-Za-z0-9_]{4,32}", new.record.prefix
    )
    assert new.record.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    principal = await Authenticator(InMemoryKeyStore([new.record]), clock=lambda: NOW).authenticate(secret)
    assert principal.key_id == key_id == new.record.id
    # The secret comes after the 16 random bytes of the key id (a UUIDv4).
    assert _from_base62(secret[len(SECRET_PREFIX) :]) == int.from_bytes(random[16:48], "big")
    if signature_required:
        assert new.signing_secret is not None and new.record.signing_secret_enc is not None
        assert BOX.decrypt(new.record.signing_secret_enc, context=key_id) == new.signing_secret
        with pytest.raises(SecretBoxError):  # bound to its key id
            BOX.decrypt(new.record.signing_secret_enc, context=key_id + "x")


@FUZZ
@given(data=st.binary(max_size=32))
def test_base62_secrets_are_fixed_width_and_lose_nothing(data):
    encoded = base62(data)
    assert len(encoded) == 43 and set(encoded) <= set(BASE62)
    assert _from_base62(encoded) == int.from_bytes(data, "big")


@FUZZ
@given(
    token=st.one_of(
        FUZZ_TEXT,
        st.builds("v1.{}".format, ANY_TEXT),
        st.builds("v1.{}".format, st.from_regex(r"\A[A-Za-z0-9_-]{0,80}\Z")),
    ),
    context=IDENTIFIER,  # the key id: every caller passes a validated one
)
def test_opening_any_sealed_secret_token_fails_only_with_secret_box_error(token, context):
    with contextlib.suppress(SecretBoxError):
        BOX.decrypt(token, context=context)


@FUZZ
@given(micros=st.integers(0, 2**63), key_id=IDENTIFIER)
def test_key_list_cursor_round_trips(micros, key_id):
    assert decode_cursor(encode_cursor((micros, key_id))) == (micros, key_id)


@FUZZ
@given(cursor=FUZZ_TEXT)
@example(cursor="²|k".encode().hex())  # "²" is a digit to isdigit(), not to int()
def test_any_key_list_cursor_decodes_or_is_a_value_error(cursor):
    try:
        decoded = decode_cursor(cursor)
    except ValueError:
        return
    assert decoded is not None and decoded[0] >= 0 and decoded[1]


# ---------------------------------------------------------------- headers


@FUZZ
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"x-api-key",
                    b"authorization",
                    b"content-type",
                    b"idempotency-key",
                    b"x-signature",
                    b"x-other",
                ]
            ),
            HEADER_BYTES,
        ),
        max_size=6,
    )
)
def test_reading_the_credential_is_total_on_any_headers(headers):
    credential, eligible = _credential(headers)
    assert credential is None or isinstance(credential, str)
    assert isinstance(eligible, bool)
    for name, value in headers:
        if name == b"authorization":
            with contextlib.suppress(OAuthProblem):
                _connexion_authorization(value)


@FUZZ
@given(lead=NEAR_SPACING, scheme=BEARER, gap=NEAR_SPACING, token=FUZZ_TEXT, trail=NEAR_SPACING)
@example(lead="", scheme="Bearer", gap=" \x85", token="tok", trail="")
@example(lead="\xa0", scheme="BEARER", gap=" ", token="tok", trail=" ")
def test_fast_lane_and_connexion_read_the_same_bearer_token(lead, scheme, gap, token, trail):
    raw = (lead + scheme + gap + token + trail).encode("latin-1", "replace")
    credential, eligible = _credential([(b"content-type", b"application/json"), (b"authorization", raw)])
    try:
        kind, value = _connexion_authorization(raw)
    except OAuthProblem:
        kind, value = None, None
    # The lane serves only a credential that authenticates, so never a blank one ("bearer \x1c"):
    # whatever it could serve, Connexion would authenticate with the same key.
    if eligible and credential is not None and credential.strip():
        assert kind == "bearer" and value is not None and credential.strip() == value.strip()
    if lead == "" and gap == " " and token and not token[0].isspace():  # the plain form: always the lane's
        assert eligible and credential == (token + trail).encode("latin-1", "replace").decode("latin-1")


@FUZZ
@given(value=HEADER_BYTES)
def test_any_api_key_header_is_read_as_its_latin_1_text(value):
    credential, eligible = _credential([(b"content-type", b"application/json"), (b"x-api-key", value)])
    assert eligible and credential == value.decode("latin-1")


REPEATED = {
    b"x-api-key": [(b"x-api-key", b"rk_first"), (b"x-api-key", b"rk_second")],
    b"authorization": [(b"authorization", b"Bearer rk_first"), (b"authorization", b"Bearer rk_second")],
    b"content-type": [(b"x-api-key", b"rk_first"), (b"content-type", b"text/plain")],
}


@pytest.mark.parametrize("name", list(REPEATED))
def test_a_repeated_credential_or_media_type_is_left_to_connexion(name):
    """Readers disagree on repeated headers (first or last occurrence); the lane takes none of them,
    so Connexion's one reading decides, and both paths answer alike."""
    headers = [(b"content-type", b"application/json"), *REPEATED[name]]
    assert _credential(headers) == (None, False)
    single = [(b"content-type", b"application/json"), (b"x-api-key", b"rk_first")]
    assert _credential(single) == ("rk_first", True)


# ---------------------------------------------------------------- HMAC signatures


@FUZZ
@given(
    timestamp=st.one_of(st.none(), FUZZ_TEXT, DIGITS, st.builds("{}{}{}".format, SPACING, DIGITS, SPACING)),
    signature=st.one_of(
        st.none(),
        FUZZ_TEXT,
        st.builds("{}{}{}".format, SPACING, st.binary(min_size=32, max_size=32).map(bytes.hex), SPACING),
    ),
    method=st.text(ANY_CHAR, max_size=10),
    path=FUZZ_TEXT,
    body=HEADER_BYTES,
)
@example(
    timestamp="\u0661\u0667\u0669\u0665\u0667\u0668\u0663\u0660\u0660\u0660",
    signature="0" * 64,
    method="POST",
    path="/v1/inference",
    body=b"",
)
@example(timestamp=str(T), signature="0" * 64, method="P\ud800", path="/\udcff", body=b"")
async def test_any_signature_headers_end_in_a_documented_signature_error(
    timestamp, signature, method, path, body
):
    try:
        await _verifier().verify_headers(
            KEY_ID, SIGNING_SECRET.encode(), method, path, body, timestamp, signature
        )
    except ApiError as err:
        assert err.code in SIGNATURE_ERRORS and err.status_code == 401


@FUZZ
@given(
    secret=st.binary(min_size=1, max_size=64),
    method=st.sampled_from(["POST", "post", "GET"]),
    path=FUZZ_TEXT,
    body=st.binary(max_size=2048),
    skew=st.integers(-300, 300),
    spacing=st.tuples(SPACING, SPACING),
    upper=st.booleans(),
)
async def test_a_valid_signature_verifies_once_then_is_a_replay(
    secret, method, path, body, skew, spacing, upper
):
    headers = sign_request(secret, method, path, body, T + skew)
    signature = headers[SIGNATURE_HEADER].upper() if upper else headers[SIGNATURE_HEADER]
    signature = spacing[0] + signature + spacing[1]
    verifier = _verifier()
    await verifier.verify_headers(KEY_ID, secret, method, path, body, headers[TIMESTAMP_HEADER], signature)
    with pytest.raises(ApiError) as err:
        await verifier.verify_headers(
            KEY_ID, secret, method, path, body, headers[TIMESTAMP_HEADER], signature
        )
    assert err.value.code == "SIGNATURE_REPLAYED"


@FUZZ
@given(
    part=st.sampled_from(["body", "timestamp", "signature", "key", "path"]),
    index=st.integers(0, 10_000),
    value=st.integers(0, 255),
    body=st.binary(min_size=1, max_size=512),
)
async def test_any_single_byte_change_to_a_signed_request_fails(part, index, value, body):
    secret, path, timestamp = SIGNING_SECRET.encode(), "/v1/inference", str(T)
    signature = sign_request(secret, "POST", path, body, T)[SIGNATURE_HEADER]
    args = {"body": body, "timestamp": timestamp, "signature": signature, "key": secret, "path": path}
    original = args[part]
    raw = original if isinstance(original, bytes) else original.encode()
    changed = _one_byte_changed(raw, index, value)
    args[part] = changed if isinstance(original, bytes) else changed.decode("latin-1")
    try:
        await _verifier().verify_headers(
            KEY_ID, args["key"], "POST", args["path"], args["body"], args["timestamp"], args["signature"]
        )
    except ApiError as err:
        assert err.code in {"SIGNATURE_INVALID", "SIGNATURE_EXPIRED"}
    else:  # hex is case-insensitive: only a letter's case may change and still verify
        assert part == "signature" and args["signature"].lower() == signature


def _envelope(payload: str, max_tokens: int) -> dict[str, Any]:
    return {
        "request_id": "3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60",
        "model": "m",
        "payload": payload,
        "parameters": {"max_tokens": max_tokens},
    }


@FUZZ
@given(payload=FUZZ_TEXT, signature=FUZZ_TEXT, timestamp=st.one_of(st.none(), st.integers(), FUZZ_TEXT))
@example(payload="\ud800", signature="0" * 64, timestamp=T)
async def test_any_body_signature_is_valid_or_a_documented_signature_error(payload, signature, timestamp):
    document = {**_envelope(payload, 1), "hmac_timestamp": timestamp, "hmac_signature": signature}
    try:
        await _verifier().verify_body(KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, signature))
    except ApiError as err:
        assert err.code in {"SIGNATURE_INVALID", "SIGNATURE_EXPIRED"}
    else:
        assert signature.strip().lower() == sign_body(SIGNING_SECRET, document, T)["hmac_signature"]


@FUZZ
@given(
    payload=st.text(max_size=500),
    max_tokens=st.integers(1, 1_000_000),
    index=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
async def test_a_body_signature_verifies_and_any_byte_change_fails(payload, max_tokens, index, value):
    document = sign_body(SIGNING_SECRET, _envelope(payload, max_tokens), T)
    await _verifier().verify_body(
        KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, document["hmac_signature"])
    )
    changed = _one_byte_changed(document["hmac_signature"].encode(), index, value).decode("latin-1")
    if changed.lower() == document["hmac_signature"]:
        return
    with pytest.raises(ApiError) as err:
        await _verifier().verify_body(KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, changed))
    assert err.value.code == "SIGNATURE_INVALID"


@FUZZ
@given(payload=st.text(max_size=200), max_tokens=st.integers(1, 1_000_000), more=st.integers(1, 1_000))
async def test_a_signed_body_with_a_larger_max_tokens_fails(payload, max_tokens, more):
    document = sign_body(SIGNING_SECRET, _envelope(payload, max_tokens), T)
    document["parameters"] = {"max_tokens": max_tokens + more}
    with pytest.raises(ApiError) as err:
        await _verifier().verify_body(
            KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, document["hmac_signature"])
        )
    assert err.value.code == "SIGNATURE_INVALID"


@FUZZ
@given(body=HEADER_BYTES)
@example(body=b'{"payload": "\\ud800", "hmac_signature": "x"}')
def test_reading_the_body_signature_is_total_on_any_body(body):
    found = body_signature_of(body)
    assert found is None or (isinstance(found.signature, str) and isinstance(found.document, dict))


@FUZZ
@given(
    required=st.booleans(),
    timestamp=st.one_of(st.none(), FUZZ_TEXT, st.just(str(T))),
    signature=st.one_of(st.none(), FUZZ_TEXT),
    payload_signature=st.one_of(
        st.none(),
        st.builds(
            BodySignature,
            st.dictionaries(ANY_TEXT, st.one_of(ANY_TEXT, st.integers(), st.just(T)), max_size=4),
            FUZZ_TEXT,
        ),
    ),
    path=FUZZ_TEXT,
    body=HEADER_BYTES,
)
async def test_signature_gate_ends_any_request_in_a_documented_signature_error(
    required, timestamp, signature, payload_signature, path, body
):
    gate = SignatureGate(BOX, _verifier())
    request = SignedRequest("POST", path, body, timestamp, signature, payload_signature)
    try:
        await gate.verify(_principal(signature_required=required), request)
    except ApiError as err:
        assert err.code in SIGNATURE_ERRORS and err.status_code == 401


# ---------------------------------------------------------------- constant time

_KEY_MATERIAL = (
    "secret",
    "signature",
    "digest",
    "hmac",
    "mac",
    "hash",
    "token",
    "credential",
    "password",
    "nonce",
)
_SOURCES = [
    *sorted((Path(router_impl.__file__).parent / "auth").glob("*.py")),
    Path(router_impl.__file__).parent / "web" / "security.py",
    Path(router_impl.__file__).parent / "web" / "middleware" / "fast_lane.py",
]


def _names_key_material(node: ast.expr) -> bool:
    """Whether an operand's value is key material, judged by the names it is built from."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"len", "isinstance"}
    ):
        return False  # a length or a type says nothing of the bytes
    for part in ast.walk(node):
        name = part.id if isinstance(part, ast.Name) else part.attr if isinstance(part, ast.Attribute) else ""
        words = name.lower().strip("_").split("_")
        if any(word in _KEY_MATERIAL for word in words):
            return True
    return False


def test_key_material_is_never_compared_with_equality_operators():
    """`==` on a secret, hash or signature returns at the first differing byte; compare_digest does not."""
    offenders = []
    for source in _SOURCES:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True):
                if isinstance(op, ast.Eq | ast.NotEq) and (
                    _names_key_material(left) or _names_key_material(right)
                ):
                    offenders.append(f"{source.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_the_static_check_sees_an_equality_on_a_signature():
    tree = ast.parse("if expected_signature == presented: pass\nif len(secret) == 0: pass\n")
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert [_names_key_material(c.left) for c in compares] == [True, False]
