"""The signature gate: which keys must sign, a body signature in place of the headers, a signature
from a key without a signing secret, and a sealed secret that cannot be opened."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from router_impl.auth.authenticator import Principal
from router_impl.auth.secret_box import SecretBox
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
from tests.auth.signing_support import BODY, ENVELOPE, PATH, T, verifier

BOX = SecretBox(b"k" * 32)


def principal(required: bool, secret: str | None = "rs_gate-secret-123456") -> Principal:
    return Principal(
        key_id="key_1",
        organization_id="org-a",
        scopes=frozenset({"inference"}),
        allowed_models=None,
        signature_required=required,
        signing_secret_enc=None if secret is None else BOX.encrypt(secret, context="key_1"),
    )


def gate() -> SignatureGate:
    return SignatureGate(BOX, verifier())


def signed(secret: str = "rs_gate-secret-123456", **overrides) -> SignedRequest:
    headers = sign_request(secret, "POST", PATH, BODY, T)
    fields = {
        "method": "POST",
        "path": PATH,
        "body": BODY,
        "timestamp_header": headers[TIMESTAMP_HEADER],
        "signature_header": headers[SIGNATURE_HEADER],
    }
    return SignedRequest(**(fields | overrides))


async def gate_code(p: Principal, request: SignedRequest) -> str:
    with pytest.raises(ApiError) as err:
        await gate().verify(p, request)
    return err.value.code


async def test_key_that_must_sign_passes_with_a_good_signature_and_fails_without_one():
    await gate().verify(principal(True), signed())
    unsigned = signed(timestamp_header=None, signature_header=None)
    assert await gate_code(principal(True), unsigned) == "SIGNATURE_MISSING"


def body_signed(secret: str) -> BodySignature | None:
    return body_signature_of(orjson.dumps(sign_body(secret, ENVELOPE, T)))


async def test_key_that_must_sign_may_sign_the_inference_body_instead():
    good = signed(
        timestamp_header=None, signature_header=None, payload_signature=body_signed("rs_gate-secret-123456")
    )
    await gate().verify(principal(True), good)
    bad = signed(
        timestamp_header=None, signature_header=None, payload_signature=body_signed("rs_other-secret-00000")
    )
    assert await gate_code(principal(True), bad) == "SIGNATURE_INVALID"


async def test_key_that_need_not_sign_is_not_checked_unless_it_sends_a_signature():
    await gate().verify(principal(False), signed(timestamp_header=None, signature_header=None))
    await gate().verify(principal(False, secret=None), signed(timestamp_header=None, signature_header=None))
    await gate().verify(principal(False), signed())
    assert await gate_code(principal(False), signed("rs_wrong-secret-000000")) == "SIGNATURE_INVALID"


async def test_signature_sent_with_a_key_that_has_no_signing_secret_is_refused():
    assert await gate_code(principal(False, secret=None), signed()) == "SIGNATURE_INVALID"
    assert await gate_code(principal(True, secret=None), signed()) == "SIGNATURE_INVALID"


async def test_unreadable_sealed_secret_is_an_internal_error_not_the_clients_fault():
    p = Principal("key_1", "org-a", frozenset({"inference"}), None, True, "v1.garbage")
    assert await gate_code(p, signed()) == "INTERNAL_ERROR"
    moved = Principal(
        "key_2", "org-a", frozenset({"inference"}), None, True, principal(True).signing_secret_enc
    )
    assert await gate_code(moved, signed()) == "INTERNAL_ERROR"


async def test_a_body_signature_is_checked_for_a_key_that_need_not_sign():
    request = signed(timestamp_header=None, signature_header=None)
    await gate().verify(
        principal(False), replace(request, payload_signature=body_signed("rs_gate-secret-123456"))
    )
    wrong = replace(request, payload_signature=body_signed("rs_other-secret-00000"))
    assert await gate_code(principal(False), wrong) == "SIGNATURE_INVALID"
