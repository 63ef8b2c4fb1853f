"""Hypothesis fuzz of HMAC request and body signatures: any signature headers or body end in a documented
signature error, a valid signature verifies once, any byte changed fails; and a static check keeps key
material out of `==` (comparisons go through compare_digest).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import router_impl
from router_impl.auth.signature_gate import SignatureGate, SignedRequest
from router_impl.auth.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BodySignature,
    body_signature_of,
    sign_body,
    sign_request,
)
from router_impl.errors import ApiError
from tests.security.auth_fuzz_support import (
    ANY_CHAR,
    ANY_TEXT,
    BOX,
    DIGITS,
    FUZZ,
    FUZZ_TEXT,
    HEADER_BYTES,
    KEY_ID,
    SIGNATURE_ERRORS,
    SIGNING_SECRET,
    SPACING,
    T,
    fuzz_principal,
    fuzz_verifier,
    one_byte_changed,
)

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
        await fuzz_verifier().verify_headers(
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
    verifier = fuzz_verifier()
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
    changed = one_byte_changed(raw, index, value)
    args[part] = changed if isinstance(original, bytes) else changed.decode("latin-1")
    try:
        await fuzz_verifier().verify_headers(
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
        await fuzz_verifier().verify_body(KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, signature))
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
    await fuzz_verifier().verify_body(
        KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, document["hmac_signature"])
    )
    changed = one_byte_changed(document["hmac_signature"].encode(), index, value).decode("latin-1")
    if changed.lower() == document["hmac_signature"]:
        return
    with pytest.raises(ApiError) as err:
        await fuzz_verifier().verify_body(KEY_ID, SIGNING_SECRET.encode(), BodySignature(document, changed))
    assert err.value.code == "SIGNATURE_INVALID"


@FUZZ
@given(payload=st.text(max_size=200), max_tokens=st.integers(1, 1_000_000), more=st.integers(1, 1_000))
async def test_a_signed_body_with_a_larger_max_tokens_fails(payload, max_tokens, more):
    document = sign_body(SIGNING_SECRET, _envelope(payload, max_tokens), T)
    document["parameters"] = {"max_tokens": max_tokens + more}
    with pytest.raises(ApiError) as err:
        await fuzz_verifier().verify_body(
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
    gate = SignatureGate(BOX, fuzz_verifier())
    request = SignedRequest("POST", path, body, timestamp, signature, payload_signature)
    try:
        await gate.verify(fuzz_principal(signature_required=required), request)
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
