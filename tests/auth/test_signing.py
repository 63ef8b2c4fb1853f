"""HMAC request signatures (headers over method, path, timestamp and body) and inference body
signatures (over the canonical JSON): what verifies, what is refused with which code, the replay
window and the nonces it keeps."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_impl.auth.nonces import MemoryNonceStore
from router_impl.auth.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BodySignature,
    SignatureVerifier,
    body_signature_of,
    nonce_key,
    sign_body,
    sign_request,
    string_to_sign,
)
from router_impl.errors import ApiError
from tests.auth.signing_support import BODY, ENVELOPE, NOW, PATH, SECRET, T, verifier
from tests.harness.clock import WallClock


async def verify(v: SignatureVerifier, headers: dict[str, str | None], **overrides):
    args = {"key_id": "key_1", "signing_secret": SECRET, "method": "POST", "path": PATH, "body": BODY}
    args |= overrides
    await v.verify_headers(
        timestamp_header=headers.get(TIMESTAMP_HEADER), signature_header=headers.get(SIGNATURE_HEADER), **args
    )


async def code_of(v: SignatureVerifier, headers: dict[str, str | None], **overrides) -> str:
    with pytest.raises(ApiError) as err:
        await verify(v, headers, **overrides)
    assert err.value.status_code == 401
    return err.value.code


def test_signature_is_hex_hmac_sha256_of_the_documented_string():
    expected_string = f"{T}\nPOST\n{PATH}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    assert string_to_sign(T, "post", PATH, BODY) == expected_string
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    assert headers == {
        TIMESTAMP_HEADER: str(T),
        SIGNATURE_HEADER: hmac.new(SECRET, expected_string, hashlib.sha256).hexdigest(),
    }


async def test_correctly_signed_request_is_accepted():
    await verify(verifier(), sign_request(SECRET, "POST", PATH, BODY, T))


async def test_uppercase_hex_and_surrounding_spaces_are_tolerated():
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    await verify(
        verifier(), {TIMESTAMP_HEADER: f" {T} ", SIGNATURE_HEADER: headers[SIGNATURE_HEADER].upper() + " "}
    )


@pytest.mark.parametrize("missing", [TIMESTAMP_HEADER, SIGNATURE_HEADER, "both"])
async def test_unsigned_request_is_refused_as_signature_missing(missing):
    headers: dict[str, str | None] = dict(sign_request(SECRET, "POST", PATH, BODY, T))
    for name in (TIMESTAMP_HEADER, SIGNATURE_HEADER) if missing == "both" else (missing,):
        headers[name] = None
    assert await code_of(verifier(), headers) == "SIGNATURE_MISSING"


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"model":"m","payload":"HI"}'},
        {"path": "/v1/chat/completions"},
        {"method": "PUT"},
        {"signing_secret": b"rs_another-secret"},
    ],
    ids=["body", "path", "method", "secret"],
)
async def test_request_altered_after_signing_is_refused_as_signature_invalid(change):
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    assert await code_of(verifier(), headers, **change) == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    "headers",
    [
        {TIMESTAMP_HEADER: "12.5", SIGNATURE_HEADER: "0" * 64},
        {TIMESTAMP_HEADER: "-5", SIGNATURE_HEADER: "0" * 64},
        {TIMESTAMP_HEADER: "2026-11-27T12:00:00Z", SIGNATURE_HEADER: "0" * 64},
        {TIMESTAMP_HEADER: "9" * 40, SIGNATURE_HEADER: "0" * 64},
        {TIMESTAMP_HEADER: str(T), SIGNATURE_HEADER: "zz" * 32},
        {TIMESTAMP_HEADER: str(T), SIGNATURE_HEADER: "0" * 63},
        {TIMESTAMP_HEADER: str(T), SIGNATURE_HEADER: "sha256=" + "0" * 64},
    ],
)
async def test_malformed_signature_headers_are_refused_as_signature_invalid(headers):
    assert await code_of(verifier(), headers) == "SIGNATURE_INVALID"


@pytest.mark.parametrize("offset", [-300, 300, 0])
async def test_timestamps_at_the_window_edges_are_accepted(offset):
    await verify(
        verifier(WallClock(NOW + timedelta(seconds=offset))), sign_request(SECRET, "POST", PATH, BODY, T)
    )


@pytest.mark.parametrize("offset", [-301, 301, -86_400])
async def test_timestamps_just_outside_the_window_are_refused_as_expired(offset):
    clock = WallClock(NOW + timedelta(seconds=offset))
    assert await code_of(verifier(clock), sign_request(SECRET, "POST", PATH, BODY, T)) == "SIGNATURE_EXPIRED"


async def test_replayed_signature_is_refused_within_the_window():
    v = verifier()
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    await verify(v, headers)
    assert await code_of(v, headers) == "SIGNATURE_REPLAYED"


async def test_same_signature_under_another_key_id_is_not_a_replay():
    v = verifier()
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    await verify(v, headers, key_id="key_1")
    await verify(v, headers, key_id="key_2")


async def test_forged_signatures_do_not_fill_the_nonce_store():
    nonces = MemoryNonceStore()
    v = SignatureVerifier(nonces, WallClock(NOW))
    for i in range(20):
        with pytest.raises(ApiError):
            await verify(v, {TIMESTAMP_HEADER: str(T), SIGNATURE_HEADER: f"{i:064x}"})
    assert len(nonces) == 0


async def test_replay_window_is_remembered_for_twice_the_window():
    class Recording:
        ttl: list[int] = []
        keys: list[str] = []

        async def first_use(self, key: str, ttl_seconds: int) -> bool:
            self.keys.append(key)
            self.ttl.append(ttl_seconds)
            return True

    store = Recording()
    headers = sign_request(SECRET, "POST", PATH, BODY, T)
    await SignatureVerifier(store, WallClock(NOW), window_seconds=120).verify_headers(
        "key_9", SECRET, "POST", PATH, BODY, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    )
    assert store.ttl == [240]
    assert (
        store.keys
        == [f"nonce:{{key_9}}:{hashlib.sha256(headers[SIGNATURE_HEADER].encode()).hexdigest()}"]
        == [nonce_key("key_9", headers[SIGNATURE_HEADER])]
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    timestamp=st.one_of(
        st.none(), st.text(max_size=80), st.integers().map(str), st.integers(T - 400, T + 400).map(str)
    ),
    signature=st.one_of(
        st.none(), st.text(max_size=100), st.binary(min_size=32, max_size=32).map(lambda b: b.hex())
    ),
    method=st.text(st.characters(exclude_categories=()), max_size=10),
    path=st.text(st.characters(exclude_categories=()), max_size=50),
    body=st.binary(max_size=200),
)
async def test_arbitrary_signature_headers_only_ever_raise_api_errors(
    timestamp, signature, method, path, body
):
    try:
        await verifier().verify_headers("key_1", SECRET, method, path, body, timestamp, signature)
    except ApiError as err:
        assert err.code in {"SIGNATURE_MISSING", "SIGNATURE_INVALID", "SIGNATURE_EXPIRED"}


# ---------------------------------------------------------------- body signature (/v1/inference)


async def verify_body(v: SignatureVerifier, document: dict, key_id: str = "key_1") -> None:
    signed = body_signature_of(orjson.dumps(document))
    assert signed is not None
    await v.verify_body(key_id, SECRET, signed)


async def body_code(v: SignatureVerifier, document: dict) -> str:
    with pytest.raises(ApiError) as err:
        await verify_body(v, document)
    assert err.value.status_code == 401
    return err.value.code


def test_body_signature_is_hmac_of_the_canonical_json_of_the_body_without_it():
    signed = sign_body(SECRET, ENVELOPE, T)
    canonical = (
        '{"hmac_timestamp":' + str(T) + ',"model":"m","parameters":{"max_tokens":64,"temperature":0.2},'
        '"payload":"héllo wörld","request_id":"3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60"}'
    ).encode()
    assert signed["hmac_timestamp"] == T
    assert signed["hmac_signature"] == hmac.new(SECRET, canonical, hashlib.sha256).hexdigest()


async def test_a_signed_body_passes_once_whatever_its_key_order_and_spacing():
    v = verifier()
    signed = sign_body(SECRET, ENVELOPE, T)
    reordered = dict(reversed(list(signed.items())))
    await v.verify_body(
        "key_1", SECRET, body_signature_of(orjson.dumps(reordered, option=orjson.OPT_INDENT_2))
    )
    assert await body_code(v, signed) == "SIGNATURE_REPLAYED"


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": "00000000-0000-4000-8000-000000000000"},  # a new request id: billed again
        {"model": "a-dearer-model"},
        {"parameters": {"max_tokens": 4096, "temperature": 0.2}},
        {"parameters": {"max_tokens": 64}},
        {"payload": "another prompt"},
        {"content_type": "application/json"},
        {"metadata": {"team": "someone-else"}},
        {"hmac_timestamp": T + 1},
    ],
)
async def test_changing_anything_in_a_signed_body_breaks_its_signature(change):
    assert await body_code(verifier(), {**sign_body(SECRET, ENVELOPE, T), **change}) == "SIGNATURE_INVALID"


@pytest.mark.parametrize("timestamp", [None, "1700000000", 17e8, True, -1, 10**12])
async def test_a_body_signature_without_an_integer_timestamp_is_invalid(timestamp):
    document = sign_body(SECRET, ENVELOPE, T)
    if timestamp is None:
        del document["hmac_timestamp"]
    else:
        document["hmac_timestamp"] = timestamp
    assert await body_code(verifier(), document) == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("offset", "code"), [(-300, None), (300, None), (-301, "SIGNATURE_EXPIRED"), (301, "SIGNATURE_EXPIRED")]
)
async def test_a_body_signature_has_the_same_window_as_the_headers(offset, code):
    v = verifier(WallClock(NOW + timedelta(seconds=offset)))
    document = sign_body(SECRET, ENVELOPE, T)
    if code is None:
        await verify_body(v, document)
    else:
        assert await body_code(v, document) == code


async def test_a_forged_body_signature_is_not_remembered():
    nonces = MemoryNonceStore()
    v = SignatureVerifier(nonces, WallClock(NOW))
    assert (
        await body_code(v, {**ENVELOPE, "hmac_timestamp": T, "hmac_signature": "0" * 64})
        == "SIGNATURE_INVALID"
    )
    assert len(nonces) == 0


@settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(
        st.text(max_size=20),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=6,
    ),
    signature=st.text(max_size=100),
)
async def test_arbitrary_signed_bodies_only_ever_raise_api_errors(document, signature):
    try:
        await verifier().verify_body("key_1", SECRET, BodySignature(document, signature))
    except ApiError as err:
        assert err.code in {"SIGNATURE_INVALID", "SIGNATURE_EXPIRED"}


@pytest.mark.parametrize(
    ("body", "signature"),
    [
        (b'{"payload": "p", "hmac_signature": "abc"}', "abc"),
        (b'{"payload": "p"}', None),
        (b'{"payload": 1, "hmac_signature": 5}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_the_body_signature_is_read_from_inference_bodies(body, signature):
    found = body_signature_of(body)
    assert (found.signature if found else None) == signature
