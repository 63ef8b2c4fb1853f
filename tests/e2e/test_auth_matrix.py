"""US-1: every bad credential is refused with its exact code before any backend is touched.

Each case runs on the OpenAI route (OpenAI error shape) and on /v1/inference (contract shape);
afterwards the backend has seen no inference call and no usage record names the request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from router_impl.auth.signing import sign_body
from tests.e2e.conftest import (
    KEYS,
    MODEL,
    ORG,
    OTHER_MODEL,
    SIGNING_SECRET,
    auth,
    dumps,
    records_for,
    signed_headers,
)
from tests.harness.bodies import chat_body
from tests.harness.config_docs import key_record
from tests.harness.errors import error_code
from tests.harness.process import ServiceStartError
from tests.harness.router_proc import RouterProcess

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
ENDPOINTS = [CHAT, INFERENCE]


def body_for(path: str, model: str = MODEL, text: str = "may I pass") -> dict[str, Any]:
    if path == INFERENCE:
        return {"request_id": str(uuid.uuid4()), "model": model, "payload": text}
    return chat_body(model, text)


def post(http, path: str, body: dict[str, Any], headers: dict[str, str]):
    request_id = f"e2e-auth-{uuid.uuid4()}"
    raw = dumps(body)
    response = http.post(
        path,
        content=raw,
        headers={"Content-Type": "application/json", "X-Request-ID": request_id, **headers},
    )
    # Usage records carry the body's request_id on /v1/inference (the contract's idempotency token).
    return response, str(body.get("request_id", request_id))


def assert_refused(router, mock, response, request_id: str, status: int, code: str) -> None:
    assert (response.status_code, error_code(response)) == (status, code), response.text
    assert mock.inference_requests == 0, "a refused request reached the backend"
    assert records_for(router, request_id) == [], "a refused request was billed"


def wrong_signature(*_: Any) -> dict[str, str]:
    return {"X-Signature-Timestamp": str(int(time.time())), "X-Signature": "0" * 64}


CREDENTIAL_CASES: dict[str, tuple[Callable[[], dict[str, str]], str, int, str]] = {
    # name: (headers, model, status, code)
    "unknown-key": (lambda: auth("rk_e2e_never_issued"), MODEL, 401, "INVALID_API_KEY"),
    "unknown-key-as-x-api-key": (lambda: {"X-API-Key": "rk_e2e_never_issued"}, MODEL, 401, "INVALID_API_KEY"),
    "no-credentials": (dict, MODEL, 401, "AUTH_INVALID"),
    "expired-key": (lambda: auth(KEYS["expired"]), MODEL, 401, "INVALID_API_KEY"),
    "revoked-key": (lambda: auth(KEYS["revoked"]), MODEL, 401, "INVALID_API_KEY"),
    "audit-only-key": (lambda: auth(KEYS["audit"]), MODEL, 403, "FORBIDDEN"),
    "admin-only-key": (lambda: auth(KEYS["admin"]), MODEL, 403, "FORBIDDEN"),
    "model-not-in-allowed-models": (lambda: auth(KEYS["restricted"]), MODEL, 403, "MODEL_NOT_ALLOWED"),
    "signature-sent-with-a-key-that-has-no-signing-secret": (
        lambda: {**auth(KEYS["user"]), **wrong_signature()},
        MODEL,
        401,
        "SIGNATURE_INVALID",
    ),
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("case", list(CREDENTIAL_CASES))
def test_a_bad_credential_is_refused_before_any_backend_call(http, router, mock, path, case):
    headers, model, status, code = CREDENTIAL_CASES[case]

    response, request_id = post(http, path, body_for(path, model), headers())

    assert_refused(router, mock, response, request_id, status, code)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_the_same_keys_pass_where_they_are_allowed(http, router, mock, path):
    """The control group: the matrix fails for the credential, not for the request."""
    for key, model in ((KEYS["user"], MODEL), (KEYS["restricted"], OTHER_MODEL)):
        response, _ = post(http, path, body_for(path, model), auth(key))
        assert response.status_code == 200, response.text
    response, _ = post(http, path, body_for(path), {"X-API-Key": KEYS["user"].secret})
    assert response.status_code == 200, response.text
    assert mock.inference_requests == 3


# ---------------------------------------------------------------- HMAC request signatures

SIGNER = KEYS["signer"]


def _signature_cases(path: str, raw: bytes) -> dict[str, tuple[dict[str, str], str]]:
    now = int(time.time())
    good = signed_headers(SIGNING_SECRET, path, raw, timestamp=now)
    other_path = INFERENCE if path == CHAT else CHAT
    return {
        "no-signature-headers": ({}, "SIGNATURE_MISSING"),
        "timestamp-without-signature": (
            {"X-Signature-Timestamp": good["X-Signature-Timestamp"]},
            "SIGNATURE_MISSING",
        ),
        "signature-without-timestamp": ({"X-Signature": good["X-Signature"]}, "SIGNATURE_MISSING"),
        "signature-under-another-secret": (
            signed_headers("rs_not_the_signing_secret_0123456789", path, raw, timestamp=now),
            "SIGNATURE_INVALID",
        ),
        "signature-of-another-body": (
            signed_headers(SIGNING_SECRET, path, raw + b" ", timestamp=now),
            "SIGNATURE_INVALID",
        ),
        "signature-of-another-path": (
            signed_headers(SIGNING_SECRET, other_path, raw, timestamp=now),
            "SIGNATURE_INVALID",
        ),
        "signature-not-hex": ({**good, "X-Signature": "not-a-signature"}, "SIGNATURE_INVALID"),
        "timestamp-not-a-number": ({**good, "X-Signature-Timestamp": "yesterday"}, "SIGNATURE_INVALID"),
        "timestamp-an-hour-old": (
            signed_headers(SIGNING_SECRET, path, raw, timestamp=now - 3600),
            "SIGNATURE_EXPIRED",
        ),
        "timestamp-an-hour-ahead": (
            signed_headers(SIGNING_SECRET, path, raw, timestamp=now + 3600),
            "SIGNATURE_EXPIRED",
        ),
    }


SIGNATURE_CASE_NAMES = list(_signature_cases(CHAT, b"{}"))


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("case", SIGNATURE_CASE_NAMES)
def test_a_signing_key_with_a_missing_bad_or_stale_signature_is_refused(http, router, mock, path, case):
    body = body_for(path)
    raw = dumps(body)
    headers, code = _signature_cases(path, raw)[case]

    response, request_id = post(http, path, body, {**auth(SIGNER), **headers})

    assert_refused(router, mock, response, request_id, 401, code)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_correctly_signed_request_is_served(http, router, mock, path):
    body = body_for(path, text=f"signed {uuid.uuid4()}")
    headers = {**auth(SIGNER), **signed_headers(SIGNING_SECRET, path, dumps(body))}

    response, request_id = post(http, path, body, headers)

    assert response.status_code == 200, response.text
    assert mock.inference_requests == 1
    assert len(records_for(router, request_id)) == 1


def test_a_signature_works_with_the_key_in_x_api_key(http, router, mock):
    body = body_for(CHAT)
    headers = {"X-API-Key": SIGNER.secret, **signed_headers(SIGNING_SECRET, CHAT, dumps(body))}

    response, _ = post(http, CHAT, body, headers)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_signature_is_accepted_once_and_its_replay_is_refused(http, router, mock, path):
    body = body_for(path, text=f"signed {uuid.uuid4()}")
    headers = {**auth(SIGNER), **signed_headers(SIGNING_SECRET, path, dumps(body))}

    first, first_id = post(http, path, body, headers)
    assert first.status_code == 200, first.text
    assert mock.inference_requests == 1

    replay, replay_id = post(http, path, body, headers)

    assert (replay.status_code, error_code(replay)) == (401, "SIGNATURE_REPLAYED")
    assert mock.inference_requests == 1, "a replayed signature reached the backend"
    # On /v1/inference both carry the body's request_id: still only the first request is billed.
    expected = 1 if replay_id == first_id else 0
    assert len(records_for(router, replay_id)) == expected


# ---------------------------------------------------------------- /v1/inference hmac_signature field


@pytest.mark.parametrize(
    ("key_name", "signature"),
    [
        ("signer", hmac.new(b"rs_some_other_secret_entirely_0000", b"x", hashlib.sha256).hexdigest()),
        ("signer", "f" * 64),
        ("user", "a" * 64),  # a key without a signing secret cannot sign at all
    ],
    ids=["signer-wrong-secret", "signer-garbage", "key-without-signing-secret"],
)
def test_a_bad_hmac_signature_field_is_refused_before_any_backend_call(
    http, router, mock, key_name, signature
):
    body = {**body_for(INFERENCE), "hmac_timestamp": int(time.time()), "hmac_signature": signature}

    response, request_id = post(http, INFERENCE, body, auth(KEYS[key_name]))

    assert_refused(router, mock, response, request_id, 401, "SIGNATURE_INVALID")


def test_a_signature_over_another_payload_is_refused(http, router, mock):
    body = sign_body(
        SIGNING_SECRET, body_for(INFERENCE, text="the payload that was signed"), int(time.time())
    )
    body["payload"] = "the payload that is sent"

    response, request_id = post(http, INFERENCE, body, auth(SIGNER))

    assert_refused(router, mock, response, request_id, 401, "SIGNATURE_INVALID")


def test_a_valid_hmac_signature_field_stands_in_for_the_signature_headers(http, router, mock):
    body = sign_body(SIGNING_SECRET, body_for(INFERENCE, text="signed in the body"), int(time.time()))

    response, _ = post(http, INFERENCE, body, auth(SIGNER))

    assert response.status_code == 200, response.text
    assert response.json()["output"]["text"] == "signed in the body"
    assert mock.inference_requests == 1


@pytest.fixture(scope="module")
def connexion_router(start_router) -> RouterProcess:
    return start_router(env={"ROUTER_FAST_LANE": "false"})


@pytest.fixture(params=["fast-lane", "connexion"])
def lane_http(request: pytest.FixtureRequest, clients, router) -> httpx.Client:
    """A client of the main router (fast lane on) and of one with the fast lane off."""
    if request.param == "fast-lane":
        return clients.http(router)
    return clients.http(request.getfixturevalue("connexion_router"))


def test_a_captured_signed_body_cannot_be_replayed_changed_or_as_is(lane_http, mock):
    """Issue 16 finding 5: the body signature binds request id, model and parameters, once."""
    envelope = {**body_for(INFERENCE, text="signed once"), "parameters": {"max_tokens": 16}}
    captured = sign_body(SIGNING_SECRET, envelope, int(time.time()))
    first, _ = post(lane_http, INFERENCE, captured, auth(SIGNER))
    assert first.status_code == 200, first.text

    replays = {
        "new request id": {**captured, "request_id": str(uuid.uuid4())},
        "another model": {**captured, "model": OTHER_MODEL},
        "larger max_tokens": {**captured, "parameters": {"max_tokens": 4096}},
    }
    for name, body in replays.items():
        response, _ = post(lane_http, INFERENCE, body, auth(SIGNER))
        assert (response.status_code, error_code(response)) == (401, "SIGNATURE_INVALID"), name
    again, _ = post(lane_http, INFERENCE, captured, auth(SIGNER))
    assert (again.status_code, error_code(again)) == (401, "SIGNATURE_REPLAYED")
    assert mock.inference_requests == 1, "a replay reached the backend"

    # The client's own retry re-signs (new timestamp) and gets the stored reply, not billed again.
    retry, _ = post(
        lane_http, INFERENCE, sign_body(SIGNING_SECRET, envelope, int(time.time()) + 1), auth(SIGNER)
    )
    assert retry.status_code == 200, retry.text
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json() == first.json()
    assert mock.inference_requests == 1


def test_a_body_signature_without_its_timestamp_is_refused(lane_http, mock):
    body = sign_body(SIGNING_SECRET, body_for(INFERENCE), int(time.time()))
    del body["hmac_timestamp"]
    response, _ = post(lane_http, INFERENCE, body, auth(SIGNER))
    assert (response.status_code, error_code(response)) == (401, "SIGNATURE_INVALID")
    assert "hmac_timestamp" in response.text
    assert mock.inference_requests == 0


# ---------------------------------------------------------------- keys from a hand-written config


def test_a_config_key_whose_expiry_has_no_time_zone_is_never_a_server_error(start_router, make_config, mock):
    future = key_record("key-naive-future", ORG, "rk_e2e_naive_future", expires_at=datetime(2099, 1, 1))
    past = key_record("key-naive-past", ORG, "rk_e2e_naive_past", expires_at=datetime(2020, 1, 1))
    config = make_config(extra_keys=(future, past))
    try:
        router = start_router(config=config)
    except ServiceStartError as exc:  # refusing the config on load, naming the field, is fine too
        assert "expires_at" in str(exc)
        return

    with httpx.Client(base_url=router.base_url, trust_env=False) as http:
        valid, _ = post(http, INFERENCE, body_for(INFERENCE), auth("rk_e2e_naive_future"))
        mock.reset_counters()
        expired, request_id = post(http, INFERENCE, body_for(INFERENCE), auth("rk_e2e_naive_past"))

    assert valid.status_code == 200, valid.text
    assert_refused(router, mock, expired, request_id, 401, "INVALID_API_KEY")
