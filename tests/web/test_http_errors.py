"""Every bad input gets the contract's error shape, with a code, before any handler runs."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from router_contract.operations import OPERATIONS

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.config.model import RuntimeConfig
from router_impl.settings import Settings
from tests.contract.openapi_check import assert_conforms
from tests.harness.config_docs import write_config
from tests.harness.errors import error_code
from tests.harness.inprocess import in_process

SECRETS = {"admin": "rk_admin_secret", "inference": "rk_inference_secret", "audit": "rk_audit_secret"}


def keys() -> tuple[ApiKeyRecord, ...]:
    records = [
        ApiKeyRecord(id=f"k-{scope}", organization_id="org-a", key_hash=hash_secret(secret), scopes={scope})
        for scope, secret in SECRETS.items()
    ]
    records.append(
        ApiKeyRecord(
            id="k-expired",
            organization_id="org-a",
            key_hash=hash_secret("rk_expired"),
            scopes={"admin"},
            expires_at=datetime.now(UTC) - timedelta(days=1),
        )
    )
    records.append(
        ApiKeyRecord(
            id="k-revoked",
            organization_id="org-a",
            key_hash=hash_secret("rk_revoked"),
            scopes={"admin"},
            revoked=True,
        )
    )
    return tuple(records)


@pytest.fixture
async def client(tmp_path):
    config = write_config(tmp_path, RuntimeConfig(api_keys=keys()), "config.yaml")
    settings = Settings(config_path=config, data_dir=tmp_path, access_log=False)
    async with in_process(settings) as router:  # started as the ASGI lifespan would: config applied
        yield router.client


def admin_get() -> tuple[str, str]:
    """An admin GET without parameters: credentials and scope are checked before any handler runs."""
    return "GET", OPERATIONS["listApiKeys"].path


async def test_health_answers_with_build_metadata_and_request_id(client):
    response = await client.get("/v1/status/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert response.headers["x-request-id"]
    assert_conforms(response)


async def test_readiness_lists_checks_and_backends(client):
    response = await client.get("/v1/status/readyz")
    assert response.status_code == 200
    body = response.json()
    assert {c["name"] for c in body["checks"]} >= {"config"}
    assert body["ready_backends"] == 0 and body["degraded_backends"] == 0
    assert body["ready_backend_ids"] == [] and body["degraded_backend_ids"] == []
    assert_conforms(response)


async def test_client_request_id_is_echoed_only_when_well_formed(client):
    ok = await client.get("/v1/status/healthz", headers={"X-Request-ID": "abc-123"})
    assert ok.headers["x-request-id"] == "abc-123"
    bad = await client.get("/v1/status/healthz", headers={"X-Request-ID": "a b<script>"})
    assert bad.headers["x-request-id"] != "a b<script>"


async def test_unknown_path_is_404_in_contract_shape(client):
    response = await client.get("/nope")
    assert (response.status_code, response.json()["code"]) == (404, "NOT_FOUND")
    assert len(response.json()["trace_id"]) == 32


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/files", "/v1/models/x/y"])
async def test_unknown_path_under_v1_is_404_in_openai_shape_before_authentication(client, path):
    response = await client.post(path, json={})
    error = response.json()["error"]
    assert response.status_code == 404
    assert (error["code"], error["type"]) == ("NOT_FOUND", "invalid_request_error")
    assert set(error) >= {"message", "type", "param", "code"}


async def test_validation_errors_name_contract_fields_never_generated_classes(client):
    headers = {"X-API-Key": SECRETS["inference"]}
    bad = {"model": "m", "messages": [{"role": "user", "content": 5}], "temperature": "hot"}
    response = await client.post("/v1/chat/completions", json=bad, headers=headers)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "body.messages.0.content" in message
    assert not re.search(r"[A-Z][a-z]+[A-Z][A-Za-z]*\d|list\[|ChatMessage", message), message


async def test_wrong_method_is_405_with_allow_header(client):
    response = await client.delete("/v1/status/healthz")
    assert (response.status_code, response.json()["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "AUTH_INVALID"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "AUTH_INVALID"),
        ({"X-API-Key": "rk_unknown"}, "INVALID_API_KEY"),
        ({"X-API-Key": "rk_expired"}, "INVALID_API_KEY"),
        ({"Authorization": "Bearer rk_revoked"}, "INVALID_API_KEY"),
    ],
    ids=["none", "basic", "unknown", "expired", "revoked"],
)
async def test_bad_credentials_are_401_with_a_code(client, headers, code):
    method, path = admin_get()
    response = await client.request(method, path, headers=headers)
    assert (response.status_code, error_code(response)) == (401, code)
    assert_conforms(response)


async def test_missing_scope_is_403(client):
    method, path = admin_get()
    response = await client.request(method, path, headers={"X-API-Key": SECRETS["inference"]})
    assert (response.status_code, error_code(response)) == (403, "FORBIDDEN")
    assert_conforms(response)


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
async def test_a_valid_key_in_either_header_reaches_the_handler(client, header):
    method, path = admin_get()
    value = SECRETS["admin"] if header == "X-API-Key" else f"Bearer {SECRETS['admin']}"
    response = await client.request(method, path, headers={header: value})
    assert response.status_code == 200, response.text
    assert {k["id"] for k in response.json()["items"]} >= {"k-admin", "k-inference", "k-audit"}
    assert_conforms(response)


async def test_openai_routes_answer_errors_in_openai_shape(client):
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "AUTH_INVALID"
    assert set(error) >= {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("path", "cap"), [("/v1/inference", 64 * 1024), ("/v1/chat/completions", 10 * 1024 * 1024)]
)
async def test_body_over_the_routes_cap_is_413_by_length_and_by_chunks(client, path, cap):
    big = b'{"payload": "' + b"a" * cap + b'"}'
    headers = {"Content-Type": "application/json", "X-API-Key": SECRETS["inference"]}
    response = await client.post(path, content=big, headers=headers)
    assert (response.status_code, error_code(response)) == (413, "PAYLOAD_TOO_LARGE")

    async def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    response = await client.post(path, content=chunks(), headers=headers)
    assert (response.status_code, error_code(response)) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"model": ', "not valid JSON"), (b'{"model": "\xff"}', "not valid UTF-8")],
    ids=["malformed", "not-utf8"],
)
async def test_malformed_json_and_invalid_utf8_are_400(client, body, message):
    response = await client.post(
        "/v1/inference",
        content=body,
        headers={"Content-Type": "application/json", "X-API-Key": SECRETS["inference"]},
    )
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_REQUEST")
    assert message in response.json()["error"]


async def test_wrong_content_type_is_415(client):
    response = await client.post(
        "/v1/inference",
        content=b"hello",
        headers={"Content-Type": "text/plain", "X-API-Key": SECRETS["inference"]},
    )
    assert (response.status_code, response.json()["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")


async def test_body_breaking_the_schema_is_400_validation_error(client):
    response = await client.post(
        "/v1/inference", json={"model": "m"}, headers={"X-API-Key": SECRETS["inference"]}
    )
    assert (response.status_code, response.json()["code"]) == (400, "VALIDATION_ERROR")
    assert_conforms(response)


async def test_unknown_query_parameter_is_400(client):
    method, path = admin_get()
    response = await client.request(method, path + "?bogus=1", headers={"X-API-Key": SECRETS["admin"]})
    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")


async def test_405_allow_header_names_every_documented_method_of_the_path(client):
    response = await client.patch("/v1/admin/backends/b1", headers={"X-API-Key": SECRETS["admin"]})
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, PUT"
