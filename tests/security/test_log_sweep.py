"""The log sweep: error paths, 500s included, never put a key, secret or signature in a log line.

A router process (debug logs, access log on) with faults injected into two ports (fault_router.py)
gets every kind of refusal and three internal errors whose frames hold live secrets: a key store that
raises right after minting a key with a signing secret, and a pipeline that raises on the fast lane
and on the Connexion path. Every line the process wrote is then searched for every secret used or
minted, and for anything shaped like a key (``rk_`` + 20 characters) or a signing secret (``rs_``).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_impl.auth.signing import sign_request
from tests.e2e.conftest import KEYS, MODEL, SECRET_KEY, SIGNING_SECRET, auth, dumps
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess, router_command
from tests.security.fault_router import FAULT_IDEMPOTENCY_KEY, FAULT_ORG, FAULT_REQUEST_ID

REPO = Path(__file__).resolve().parents[2]
MINTED_SHAPE = re.compile(r"\b(?:rk|rs)_[A-Za-z0-9]{20,}")
WRONG_KEY = "rk_sweep_wrong_0123456789abcdefghij"
CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
ADMIN_KEYS = "/v1/admin/keys"


class FaultyRouter(RouterProcess):
    """The router CLI run through fault_router, which wraps two ports before serving."""

    def command(self) -> list[str]:
        serve = super().command()[len(router_command()) :]
        return [sys.executable, "-m", "tests.security.fault_router", *serve]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        return env


@pytest.fixture(scope="module")
def faulty_router(tmp_path_factory: pytest.TempPathFactory, config_path: Path) -> Iterator[RouterProcess]:
    env = {
        "ROUTER_CONFIG_PATH": str(config_path),
        "ROUTER_SECRET_KEY": SECRET_KEY,
        "ROUTER_LOG_LEVEL": "debug",
        "ROUTER_ACCESS_LOG": "true",
    }
    router = FaultyRouter(env=env, workdir=tmp_path_factory.mktemp("faulty-router"))
    with router:
        yield router


def _json(key: str, content_type: str = "application/json") -> dict[str, str]:
    return {"X-API-Key": key, "Content-Type": content_type}


def _chat(**extra: object) -> bytes:
    return dumps(chat_body(MODEL, "sweep", **extra))


def _traffic(http: httpx.Client) -> tuple[list[httpx.Response], list[str]]:
    """Every error path the sweep covers; the answers, and the secrets minted on the way."""
    user, admin, signer = KEYS["user"].secret, KEYS["admin"].secret, KEYS["signer"].secret
    answers: list[httpx.Response] = []
    minted: list[str] = []

    def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
        answers.append(http.request(method, path, **kwargs))
        return answers[-1]

    # Internal errors with secrets in the frames: key creation, the fast lane, the Connexion path.
    faulty_key = {"organization_id": FAULT_ORG, "scopes": ["admin"], "signature_required": True}
    assert send("POST", ADMIN_KEYS, content=dumps(faulty_key), headers=_json(admin)).status_code == 500
    fast = {**_json(user), "Idempotency-Key": FAULT_IDEMPOTENCY_KEY}
    assert send("POST", CHAT, content=_chat(), headers=fast).status_code == 500
    connexion = {**fast, **auth(user), "Content-Type": "Application/JSON; charset=utf-8"}
    del connexion["X-API-Key"]
    assert send("POST", CHAT, content=_chat(), headers=connexion).status_code == 500
    envelope = dumps({"request_id": FAULT_REQUEST_ID, "model": MODEL, "payload": "sweep"})
    assert send("POST", INFERENCE, content=envelope, headers=_json(user)).status_code == 500

    # A key minted and used, then refused in every way.
    created = send(
        "POST",
        ADMIN_KEYS,
        content=dumps({**faulty_key, "organization_id": "org-sweep"}),
        headers=_json(admin),
    )
    assert created.status_code == 201, created.text
    minted += [created.json()["secret"], created.json()["signing_secret"]]
    edge = {"organization_id": "org-sweep", "scopes": ["admin"], "expires_at": "9999-12-31T23:59:59-01:00"}
    send("POST", ADMIN_KEYS, content=dumps(edge), headers=_json(admin))
    send("GET", ADMIN_KEYS, params={"cursor": b"99999999999999999999999|x".hex()}, headers=auth(admin))
    send("GET", ADMIN_KEYS, headers=auth(minted[0]))  # unsigned request with a signing key
    send("POST", CHAT, content=_chat(), headers=_json(WRONG_KEY))
    send("POST", CHAT, content=_chat(), headers={**auth(WRONG_KEY), "Content-Type": "application/json"})
    send("POST", CHAT, content=b'{"model": ', headers=_json(user))
    send("POST", CHAT, content=b"\xff\xfe", headers=_json(user))
    send("POST", CHAT, content=_chat(), headers=_json(KEYS["admin"].secret))
    send("POST", CHAT, content=_chat(), headers=_json(KEYS["expired"].secret))
    send("POST", CHAT, content=_chat(), headers=_json(KEYS["revoked"].secret))
    bad = sign_request(SIGNING_SECRET + "x", "POST", CHAT, _chat(), 1_700_000_000)
    send("POST", CHAT, content=_chat(), headers={**_json(signer), **bad})
    signed = {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "p", "hmac_signature": "0" * 64}
    signed_body = dumps(signed)
    send("POST", INFERENCE, content=signed_body, headers=_json(signer))
    send("GET", ADMIN_KEYS + "/", headers=auth(admin))
    send("GET", "/v1/nowhere", headers=auth(admin))
    send("DELETE", CHAT, headers=auth(user))
    send("POST", "/v1/admin/keys/key_0000000000000000/revoke", content=b'{"reason": 1}', headers=_json(admin))
    return answers, minted


def test_no_secret_reaches_a_log_line_even_on_internal_errors(faulty_router: RouterProcess) -> None:
    with httpx.Client(base_url=faulty_router.base_url, trust_env=False, timeout=10) as http:
        answers, minted = _traffic(http)
    faulty_router.stop()  # flush and finish the log: shutdown lines are swept too
    log = faulty_router.log_text()
    assert log.count('"unhandled_error"') >= 4, "the injected faults did not reach the error handlers"
    for answer in answers:
        assert answer.status_code != 500 or answer.json()["error"] is not None
    known = [key.secret for key in KEYS.values()] + [SIGNING_SECRET, SECRET_KEY, WRONG_KEY, *minted]
    leaked = [secret for secret in known if secret in log]
    assert not leaked, f"secrets in the log: {[s[:6] + '…' for s in leaked]}"
    shaped = MINTED_SHAPE.findall(log)
    assert not shaped, f"key-shaped values in the log: {[s[:6] + '…' for s in shaped]}"
