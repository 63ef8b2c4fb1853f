"""Regression tests for issue 16 (findings 1, 3, 4, 7, 9, 10), in process, on the fast lane and on
the Connexion path (the same app built without the lane). Each failed before its fix."""

from __future__ import annotations

import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from router_impl.demo.config import public_demo_refusal
from tests.harness.bodies import chat_body
from tests.security.inprocess import ADMIN_KEY, API_KEY, InProcess, demo_router, raw_request

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
KEYS = "/v1/admin/keys"
ADMIN = {"X-API-Key": ADMIN_KEY}
USER = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module", params=[True, False], ids=["fast-lane", "connexion"])
async def router(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InProcess]:
    async with demo_router(tmp_path_factory.mktemp("findings"), fast_lane=request.param) as running:
        yield running


def _chat(**extra: object) -> bytes:
    return orjson.dumps(chat_body("demo", "hi", **extra))


def _code(body: bytes) -> str:
    error = orjson.loads(body)["error"]
    return error["code"] if isinstance(error, dict) else orjson.loads(body)["code"]


# ---------------------------------------------------------------- 1, 4: expires_at at the calendar's edges


@pytest.mark.parametrize(
    ("expires_at", "stored", "usable"),
    [
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999Z", True),
        ("0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00Z", False),
    ],
)
async def test_an_expiry_past_the_calendars_edge_is_clamped_to_it(router, expires_at, stored, usable):
    """A schema-valid date-time whose offset leaves the calendar is no 400 or 500: it is clamped to
    the edge, so the far-future key works and the far-past key is created expired."""
    org = f"org-edge-{uuid.uuid4().hex[:8]}"
    document = {"organization_id": org, "scopes": ["admin"], "expires_at": expires_at}
    answer = await router.client.post(KEYS, json=document, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    assert answer.json()["key"]["expires_at"] == stored
    listed = await router.client.get(
        KEYS, params={"organization_id": org}, headers={"X-API-Key": answer.json()["secret"]}
    )
    assert listed.status_code == (200 if usable else 401)


async def test_an_expiry_with_an_offset_is_stored_as_its_utc_instant(router):
    document = {
        "organization_id": "org-offset",
        "scopes": ["inference"],
        "expires_at": "2999-01-01T00:30:00+01:00",
    }
    answer = await router.client.post(KEYS, json=document, headers=ADMIN)
    assert answer.status_code == 201 and answer.json()["key"]["expires_at"] == "2998-12-31T23:30:00Z"


# ---------------------------------------------------------------- 3: media types are case-insensitive


@pytest.mark.parametrize("media_type", ["APPLICATION/JSON", "Application/Json; charset=utf-8"])
async def test_an_upper_case_media_type_is_validated_and_served(router, media_type):
    ok = await router.client.post(CHAT, content=_chat(), headers={**USER, "Content-Type": media_type})
    assert ok.status_code == 200, ok.text
    bad = await router.client.post(
        CHAT, content=b'{"model": "demo"}', headers={**USER, "Content-Type": media_type}
    )
    assert (bad.status_code, _code(bad.content)) == (400, "VALIDATION_ERROR")


async def test_an_unvalidated_body_never_reaches_a_handler(router):
    """revoke_api_key once ran on a body the validator never saw: a reason of 5 revoked the key."""
    created = await router.client.post(
        KEYS, json={"organization_id": "org-r", "scopes": ["inference"]}, headers=ADMIN
    )
    key_id, secret = created.json()["key"]["id"], created.json()["secret"]
    headers = {**ADMIN, "Content-Type": "APPLICATION/JSON"}
    refused = await router.client.post(f"{KEYS}/{key_id}/revoke", content=b'{"reason": 5}', headers=headers)
    assert (refused.status_code, _code(refused.content)) == (400, "VALIDATION_ERROR")
    still = await router.client.get("/v1/models", headers={"X-API-Key": secret})
    assert still.status_code == 200


# ---------------------------------------------------------------- 4: request_id spellings, cursors


@pytest.mark.parametrize("spelling", ["{%s}", "urn:uuid:%s", "%s"])
async def test_every_uuid_spelling_is_billed_and_answered_in_canonical_form(router, spelling):
    canonical = str(uuid.uuid4())
    sent = spelling % (canonical.upper() if spelling == "%s" else canonical)
    body = orjson.dumps({"request_id": sent, "model": "demo", "payload": "hello"})
    answer = await router.client.post(
        INFERENCE, content=body, headers={**USER, "Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["request_id"] == canonical
    audit = await router.client.get(f"/v1/audit/requests/{canonical}", headers=USER)
    assert audit.status_code == 200, audit.text


async def test_a_cursor_this_api_never_issued_is_an_empty_page_not_a_500(router):
    for cursor in (b"99999999999999999999999|x".hex(), "0", "W"):
        answer = await router.client.get(KEYS, params={"cursor": cursor}, headers=ADMIN)
        assert (answer.status_code, answer.json()) == (200, {"items": []}), cursor


# ---------------------------------------------------------------- 7: hmac_signature, escaped


async def test_an_escaped_hmac_signature_key_is_the_same_field_on_both_paths(router):
    body = b'{"request_id":"%s","model":"demo","payload":"x","hmac\\u005fsignature":"%s"}' % (
        str(uuid.uuid4()).encode(),
        b"0" * 64,
    )
    answer = await router.client.post(
        INFERENCE, content=body, headers={**USER, "Content-Type": "application/json"}
    )
    assert (answer.status_code, _code(answer.content)) == (401, "SIGNATURE_INVALID")


# ---------------------------------------------------------------- 9: no redirect built from Host


@pytest.mark.parametrize(
    ("method", "target"), [("GET", b"/v1/admin/keys/"), ("POST", b"/v1/chat/completions/")]
)
async def test_a_trailing_slash_is_not_found_and_never_redirected(router, method, target):
    headers = {**ADMIN, "Host": "evil.example", "Content-Type": "application/json"}
    answer = await raw_request(router.app, method, target, headers, _chat() if method == "POST" else b"")
    assert answer.status == 404 and "location" not in answer.headers
    assert _code(answer.body) == "NOT_FOUND"


# ---------------------------------------------------------------- 10: smaller


@pytest.mark.parametrize("path", ["/v1/status/healthz", "/metrics", "/v1/models"])
@pytest.mark.parametrize(
    "media_type", ["multipart/form-data", "application/x-www-form-urlencoded", "text/plain"]
)
async def test_a_stray_content_type_on_a_get_is_ignored(router, path, media_type):
    answer = await router.client.get(path, headers={**USER, "Content-Type": media_type})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, _chat(stop=5)),
        (
            "POST",
            INFERENCE,
            orjson.dumps({"request_id": "x", "model": "de mo", "payload": "p", "parameters": {"stop": 5}}),
        ),
        ("GET", KEYS + "?limit=abc", b""),
        ("GET", KEYS + "?organization_id=a%20b", b""),
        ("GET", "/v1/admin/backends/a%20b", b""),
        ("GET", "/v1/audit/events?since=yesterday", b""),
    ],
)
async def test_validation_messages_name_fields_not_schema_fragments(router, method, path, body):
    headers = {"X-API-Key": ADMIN_KEY if "admin" in path else API_KEY, "Content-Type": "application/json"}
    answer = await router.client.request(method, path, content=body or None, headers=headers)
    assert (answer.status_code, _code(answer.content)) == (400, "VALIDATION_ERROR")
    text = answer.text
    for fragment in (
        "Stop1",
        "Stop2",
        "Failed validating",
        "schema",
        "^[",
        "'abc'",
        "a b",
        "yesterday",
        "de mo",
    ):
        assert fragment not in text, (fragment, text)


async def test_data_dir_files_are_private(router):
    await router.client.post(
        KEYS,
        json={"organization_id": "org-p", "scopes": ["inference"], "signature_required": True},
        headers=ADMIN,
    )
    await router.client.post(CHAT, content=_chat(), headers={**USER, "Content-Type": "application/json"})
    data_dir = router.components.settings.data_dir
    loose = [
        f"{path.relative_to(data_dir)} {oct(path.stat().st_mode & 0o777)}"
        for path in [data_dir, *data_dir.rglob("*")]
        if path.stat().st_mode & 0o077 and (path.is_dir() or stat.S_ISREG(path.stat().st_mode))
    ]
    assert not loose, loose


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "router.example"])
def test_demo_mode_refuses_a_public_address_with_its_well_known_keys(host: str) -> None:
    keys = ("rk-demo-key", "rk-demo-admin-key")
    assert public_demo_refusal(host, keys, allow_public=False) is not None
    assert public_demo_refusal(host, keys, allow_public=True) is None
    assert public_demo_refusal(host, ("rk_own_1", "rk_own_2"), allow_public=False) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_demo_mode_binds_loopback(host: str) -> None:
    assert public_demo_refusal(host, ("rk-demo-key", "rk-demo-admin-key"), allow_public=False) is None


def test_router_serve_demo_on_a_public_address_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ROUTER_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "router_impl.cli", "serve", "--demo", "--host", "0.0.0.0", "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "ROUTER_DEMO_ALLOW_PUBLIC" in done.stderr and "rk-demo-admin-key" not in done.stdout
