"""Keys an operator makes and revokes at runtime (POST /v1/admin/keys, /revoke) behave like US-1 says."""

from __future__ import annotations

import time
import uuid
from typing import Any

import openai
import pytest

from router_impl.auth.signing import sign_body
from tests.e2e.conftest import ALIAS, KEYS, MODEL, ORG, auth, dumps, signed_headers
from tests.harness.errors import error_code

INFERENCE = "/v1/inference"
CHAT = "/v1/chat/completions"


def create_key(http, **fields: Any) -> dict[str, Any]:
    response = http.post(
        "/v1/admin/keys",
        json={"organization_id": ORG, "scopes": ["inference"], **fields},
        headers=auth(KEYS["admin"]),
    )
    assert response.status_code == 201, response.text
    assert response.headers.get("Cache-Control") == "no-store"
    return response.json()


def envelope(text: str = "admin made me") -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": text}


def test_a_key_created_at_runtime_gets_completions_through_the_openai_client(http, clients, router, mock):
    created = create_key(http, name="e2e runtime key")

    completion = clients.openai(router, created["secret"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "fresh key"}]
    )

    assert completion.choices[0].message.content == "fresh key"
    assert "signing_secret" not in created
    assert created["secret"] not in http.get("/v1/admin/keys", headers=auth(KEYS["admin"])).text


def test_a_key_revoked_at_runtime_is_refused_on_its_next_request_without_a_backend_call(http, router, mock):
    created = create_key(http)
    assert http.post(INFERENCE, json=envelope(), headers=auth(created["secret"])).status_code == 200
    calls = mock.inference_requests

    revoked = http.post(
        f"/v1/admin/keys/{created['key']['id']}/revoke", json={"reason": "e2e"}, headers=auth(KEYS["admin"])
    )
    refused = http.post(INFERENCE, json=envelope(), headers=auth(created["secret"]))

    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert (refused.status_code, error_code(refused)) == (401, "INVALID_API_KEY")
    assert mock.inference_requests == calls


def test_a_key_created_already_expired_is_refused(http, clients, router, mock):
    created = create_key(http, expires_at="2021-06-01T00:00:00Z")

    with pytest.raises(openai.AuthenticationError) as caught:
        clients.openai(router, created["secret"]).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "too late"}]
        )

    assert caught.value.code == "INVALID_API_KEY"
    assert mock.inference_requests == 0


def test_a_key_limited_to_other_models_is_refused_this_one(http, router, mock):
    created = create_key(http, allowed_models=["other-model"])

    response = http.post(INFERENCE, json=envelope(), headers=auth(created["secret"]))

    assert (response.status_code, error_code(response)) == (403, "MODEL_NOT_ALLOWED")
    assert mock.inference_requests == 0


def test_a_signing_key_created_at_runtime_must_sign_and_its_signing_secret_works(http, router, mock):
    created = create_key(http, signature_required=True)
    secret, signing_secret = created["secret"], created["signing_secret"]

    unsigned = http.post(INFERENCE, json=envelope(), headers=auth(secret))
    wrong = http.post(
        INFERENCE,
        json=sign_body("rs_wrong_signing_secret_000000", envelope(), int(time.time())),
        headers=auth(secret),
    )
    body = envelope("signed by the operator's key")
    signed = http.post(
        INFERENCE,
        json=sign_body(signing_secret, body, int(time.time())),
        headers=auth(secret),
    )

    assert (unsigned.status_code, error_code(unsigned)) == (401, "SIGNATURE_MISSING")
    assert (wrong.status_code, error_code(wrong)) == (401, "SIGNATURE_INVALID")
    assert signed.status_code == 200, signed.text
    assert mock.inference_requests == 1


def test_a_runtime_signing_keys_header_signature_is_replay_protected(http, router, mock):
    created = create_key(http, signature_required=True)
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"once {uuid.uuid4()}"}]}
    raw = dumps(body)
    headers = {
        **auth(created["secret"]),
        **signed_headers(created["signing_secret"], CHAT, raw),
        "Content-Type": "application/json",
    }

    first = http.post(CHAT, content=raw, headers=headers)
    again = http.post(CHAT, content=raw, headers=headers)

    assert first.status_code == 200, first.text
    assert (again.status_code, error_code(again)) == (401, "SIGNATURE_REPLAYED")
    assert mock.inference_requests <= 1


def test_a_key_allowed_only_an_alias_sees_that_alias_in_its_model_list(http, clients, router, mock):
    created = create_key(http, allowed_models=[ALIAS])
    client = clients.openai(router, created["secret"])

    completion = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "alias"}])
    listed = [m.id for m in client.models.list().data]

    assert completion.choices[0].message.content == "alias"
    assert ALIAS in listed, f"the key may use {ALIAS!r} but GET /v1/models lists {listed}"
