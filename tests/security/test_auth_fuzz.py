"""Hypothesis fuzz of API-key parsing: any presented key, key header or cursor ends in a documented 401
or a value error, never a crash.

The real code is driven: the fast lane's header reader and Connexion's, the Authenticator, the
SecretBox and the key minter. Inputs include text that is not valid Unicode (lone surrogates),
non-ASCII whitespace, huge values and "Bearer" in any case (tests/security/auth_fuzz_support.py).
HMAC signatures: tests/security/test_signature_fuzz.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

import pytest
from connexion.exceptions import OAuthProblem
from hypothesis import example, given
from hypothesis import strategies as st

from router_impl.auth.admin import PREFIX_LENGTH, KeyMinter, decode_cursor, encode_cursor
from router_impl.auth.authenticator import Authenticator
from router_impl.auth.keys import (
    SECRET_PREFIX,
    InMemoryKeyStore,
    base62,
)
from router_impl.auth.secret_box import SecretBoxError
from router_impl.errors import ApiError
from router_impl.web.middleware.fast_lane import _credential
from tests.security.auth_fuzz_support import (
    ANY_TEXT,
    BASE62,
    BEARER,
    BOX,
    FUZZ,
    FUZZ_TEXT,
    HEADER_BYTES,
    IDENTIFIER,
    KEY,
    KEY_ID,
    NEAR_SPACING,
    NOW,
    SPACING,
    connexion_authorization,
    from_base62,
    fuzz_authenticator,
    one_byte_changed,
)

# ---------------------------------------------------------------- API keys


@FUZZ
@given(presented=FUZZ_TEXT)
@example(presented="\ud800")
@example(presented=KEY + "\x00")
async def test_any_presented_key_is_refused_as_invalid_api_key_unless_it_is_the_key(presented):
    try:
        principal = await fuzz_authenticator().authenticate(presented)
    except ApiError as err:
        assert (err.code, err.status_code) == ("INVALID_API_KEY", 401)
        assert presented.strip() != KEY
    else:
        assert presented.strip() == KEY
        assert principal.key_id == KEY_ID


@FUZZ
@given(before=SPACING, after=SPACING)
async def test_the_key_is_accepted_with_any_surrounding_whitespace(before, after):
    assert (await fuzz_authenticator().authenticate(before + KEY + after)).key_id == KEY_ID


@FUZZ
@given(before=NEAR_SPACING, after=NEAR_SPACING)
async def test_the_key_next_to_characters_that_are_not_whitespace_is_refused(before, after):
    presented = before + KEY + after
    if presented.strip() == KEY:
        return
    with pytest.raises(ApiError) as err:
        await fuzz_authenticator().authenticate(presented)
    assert err.value.code == "INVALID_API_KEY"


@FUZZ
@given(index=st.integers(0, len(KEY) - 1), value=st.integers(0, 255))
async def test_any_single_byte_change_to_the_key_is_refused(index, value):
    changed = one_byte_changed(KEY.encode(), index, value).decode("latin-1")  # as Starlette decodes it
    with pytest.raises(ApiError) as err:
        await fuzz_authenticator().authenticate(changed)
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
    assert from_base62(secret[len(SECRET_PREFIX) :]) == int.from_bytes(random[16:48], "big")
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
    assert from_base62(encoded) == int.from_bytes(data, "big")


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
                connexion_authorization(value)


@FUZZ
@given(lead=NEAR_SPACING, scheme=BEARER, gap=NEAR_SPACING, token=FUZZ_TEXT, trail=NEAR_SPACING)
@example(lead="", scheme="Bearer", gap=" \x85", token="tok", trail="")
@example(lead="\xa0", scheme="BEARER", gap=" ", token="tok", trail=" ")
def test_fast_lane_and_connexion_read_the_same_bearer_token(lead, scheme, gap, token, trail):
    raw = (lead + scheme + gap + token + trail).encode("latin-1", "replace")
    credential, eligible = _credential([(b"content-type", b"application/json"), (b"authorization", raw)])
    try:
        kind, value = connexion_authorization(raw)
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
