"""A caller can act on an error: a bad query parameter is named with what it accepts (not jsonschema's
dump), and 503 BACKEND_UNAVAILABLE says when to retry (Retry-After)."""

from __future__ import annotations

import socket

import pytest

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.config.model import BackendConfig, ModelPolicy, RuntimeConfig, WeightedBackend
from router_impl.settings import Settings
from tests.harness.bodies import chat_body
from tests.harness.config_docs import write_config
from tests.harness.inprocess import in_process

KEY = "rk_readable_errors"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
async def client(tmp_path):
    config = RuntimeConfig(
        backends=(BackendConfig(id="gone", base_url=f"http://127.0.0.1:{_closed_port()}/v1"),),
        models=(ModelPolicy(model="m", backends=(WeightedBackend(backend_id="gone"),)),),
        api_keys=(
            ApiKeyRecord(
                id="k1", organization_id="org-a", key_hash=hash_secret(KEY), scopes={"inference", "audit"}
            ),
        ),
    )
    path = write_config(tmp_path, config, "config.yaml")
    settings = Settings(config_path=path, data_dir=tmp_path, access_log=False)
    async with in_process(settings, headers={"Authorization": f"Bearer {KEY}"}) as router:
        yield router.client


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        (
            "action=BOGUS",
            "query.action",
            "query parameter 'action' must be one of "
            "REQUEST_ALLOWED, REQUEST_DENIED, POLICY_UPDATE, LIMIT_RESET, KEY_CREATED, KEY_REVOKED",
        ),
        ("limit=abc", "query.limit", "query parameter 'limit' must be an integer"),
        ("limit=0", "query.limit", "query parameter 'limit' must be at least 1"),
        ("limit=5000", "query.limit", "query parameter 'limit' must be at most 1000"),
        (
            "since=yesterday",
            "query.since",
            "query parameter 'since' must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z",
        ),
    ],
)
async def test_a_bad_query_parameter_is_named_with_what_it_accepts(client, query, field, message):
    reply = await client.get(f"/v1/audit/events?{query}")
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["error"] == message
    assert body["details"] == [{"field": field, "message": message}]
    assert "Failed validating" not in reply.text


async def test_backend_unavailable_says_when_to_retry(client):
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = chat_body("m", "hi")
        if path == "/v1/completions":
            body = {"model": "m", "prompt": "hi"}
        reply = await client.post(path, json=body)
        assert reply.status_code == 503, reply.text
        # the first call finds the backend down; the health probe may have marked it so already
        assert reply.json()["error"]["code"] in ("BACKEND_UNAVAILABLE", "NO_BACKEND_AVAILABLE")
        assert reply.headers["Retry-After"] == "10"
