"""No API key, signing secret, signature or master key appears in anything the router writes or
answers: logs (debug level), usage and audit files, the outbox, metrics, health bodies, error bodies.

One router with Redis (shared stores write there too) gets a mix of traffic with known secrets —
good and bad keys, signed and mis-signed requests, a key created and revoked at runtime, limit
denials, admin writes — then every artefact of the run is searched for every secret. Keys are
stored as SHA-256 hashes, so a hash in the key store is expected and is not searched for; the
plain secret, and a signature, never.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from router_impl.auth.signing import sign_body
from router_impl.usage.outbox import read_backlog
from tests.e2e.conftest import (
    KEYS,
    MODEL,
    SECRET_KEY,
    SIGNING_SECRET,
    ObservedBackend,
    auth,
    dumps,
    runtime_config,
    signed_headers,
)
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import key_record, write_config
from tests.harness.router_proc import RouterProcess
from tests.harness.services import RedisServer
from tests.harness.wait import wait_until

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
WRONG_KEY = "rk_leak_wrong_key_0123456789abcdef"
LIMITED_ORG = "org-leak-limited"
LIMITED_SECRET = "rk_leak_limited_0123456789abcdef"


@pytest.fixture(scope="module")
def leak_config(
    tmp_path_factory: pytest.TempPathFactory, backend_a: ObservedBackend, backend_f: MockBackend
) -> Path:
    config = runtime_config(backend_a, backend_f)
    config["api_keys"].append(
        key_record("key-leak-limited", LIMITED_ORG, LIMITED_SECRET, ["inference", "audit"])
    )
    config["org_limits"] = {LIMITED_ORG: {"rate_limits": {"requests_per_minute": 1, "burst": 1}}}
    return write_config(tmp_path_factory.mktemp("leak-config"), config)


@pytest.fixture(scope="module")
def leaky_run(
    start_router: Callable[..., RouterProcess], redis_server: RedisServer, leak_config: Path
) -> Iterator[tuple[RouterProcess, list[str], list[str]]]:
    """The router after the traffic, the response bodies and headers it sent, and every secret used."""
    router = start_router(
        env={"ROUTER_REDIS_URL": redis_server.url, "ROUTER_LOG_LEVEL": "debug", "ROUTER_ACCESS_LOG": "true"},
        config=leak_config,
    )
    answers: list[str] = []
    secrets = [k.secret for k in KEYS.values()] + [SIGNING_SECRET, SECRET_KEY, WRONG_KEY, LIMITED_SECRET]
    with httpx.Client(base_url=router.base_url, trust_env=False, timeout=10) as http:

        def keep(response: httpx.Response) -> None:
            answers.append(response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items()))

        chat = chat_body(MODEL, "leak check")
        keep(http.post(CHAT, json=chat, headers=auth(KEYS["user"])))
        keep(http.post(CHAT, json=chat, headers=auth(WRONG_KEY)))
        keep(http.post(CHAT, json=chat, headers={"X-API-Key": WRONG_KEY}))
        keep(http.post(CHAT, json=chat, headers=auth(KEYS["revoked"])))
        keep(http.post(CHAT, json=chat, headers=auth(KEYS["audit"])))  # wrong scope
        body = dumps(chat)
        signed = signed_headers(SIGNING_SECRET, CHAT, body)
        secrets.append(signed["X-Signature"])
        keep(
            http.post(
                CHAT,
                content=body,
                headers={**auth(KEYS["signer"]), **signed, "Content-Type": "application/json"},
            )
        )
        keep(
            http.post(
                CHAT,
                content=body,
                headers={**auth(KEYS["signer"]), **signed, "Content-Type": "application/json"},
            )
        )
        bad = {**signed, "X-Signature": "0" * 64}
        keep(
            http.post(
                CHAT,
                content=body,
                headers={**auth(KEYS["signer"]), **bad, "Content-Type": "application/json"},
            )
        )
        payload = f"signed payload {uuid.uuid4()}"
        envelope = {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": payload}
        body_signed = sign_body(SIGNING_SECRET, envelope, int(time.time()))
        secrets.append(body_signed["hmac_signature"])
        keep(http.post(INFERENCE, json=body_signed, headers=auth(KEYS["signer"])))
        created = http.post(
            "/v1/admin/keys",
            json={"organization_id": "org-leak", "scopes": ["inference"], "signature_required": True},
            headers=auth(KEYS["admin"]),
        )
        assert created.status_code == 201, created.text
        secrets.append(created.json()["secret"])
        if created.json().get("signing_secret"):
            secrets.append(created.json()["signing_secret"])
        keep(http.post(CHAT, json=chat, headers=auth(created.json()["secret"])))  # signature missing
        keep(
            http.post(
                f"/v1/admin/keys/{created.json()['key']['id']}/revoke",
                json={"reason": "leak test"},
                headers=auth(KEYS["admin"]),
            )
        )
        keep(http.post(CHAT, json=chat, headers=auth(created.json()["secret"])))  # revoked
        for _ in range(2):
            keep(http.post(CHAT, json=chat, headers=auth(LIMITED_SECRET)))  # the second is a 429
        keep(
            http.put(
                f"/v1/admin/orgs/{LIMITED_ORG}/limits",
                json={"rate_limits": {"requests_per_minute": 5}},
                headers=auth(KEYS["admin"]),
            )
        )
        keep(http.get("/v1/status/healthz"))
        keep(http.get("/v1/status/readyz"))
        keep(http.get("/metrics"))
        keep(http.get("/v1/audit/events", headers=auth(KEYS["user"])))
    outbox = router.data_dir / "outbox"
    assert wait_until(lambda: read_backlog(outbox).count == 0, timeout=10), "the outbox never drained"
    yield router, answers, secrets


def _artefacts(router: RouterProcess, redis_server: RedisServer) -> dict[str, bytes]:
    """Every file the router wrote (logs, usage and audit files, LMDB stores but the key store, which
    holds hashes and sealed secrets by design) and every value it left in Redis."""
    found: dict[str, bytes] = {"router.log": router.log_text().encode()}
    for path in router.data_dir.rglob("*"):
        if path.is_file() and "keys" not in path.relative_to(router.data_dir).parts:
            found[str(path.relative_to(router.data_dir))] = path.read_bytes()
    client = Redis.from_url(redis_server.url)
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            value: Any = b""
            if kind == b"string":
                value = client.get(key) or b""
            elif kind == b"hash":
                value = b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"zset":
                value = b" ".join(client.zrange(key, 0, -1))
            found[f"redis:{key.decode(errors='replace')}"] = key + b" " + value
    finally:
        client.close()
    return found


def test_no_secret_appears_in_any_artefact_of_the_run(leaky_run, redis_server) -> None:
    router, _, secrets = leaky_run
    artefacts = _artefacts(router, redis_server)
    assert any("usage" in name for name in artefacts) and any(n.startswith("redis:") for n in artefacts)
    assert len(artefacts["router.log"]) > 1000, (
        "the run logged almost nothing: the search would prove nothing"
    )
    leaks = [
        (name, secret[:6] + "…")
        for name, content in artefacts.items()
        for secret in secrets
        if secret.encode() in content
    ]
    assert not leaks, f"secrets found in artefacts: {leaks}"


def test_no_secret_appears_in_any_answer(leaky_run) -> None:
    _, answers, secrets = leaky_run
    # The one answer allowed to carry a secret is the key creation (shown once): not in `answers`.
    leaks = [secret[:6] + "…" for answer in answers for secret in secrets if secret in answer]
    assert not leaks, f"secrets echoed in answers: {leaks}"


def test_health_and_metrics_name_no_host_or_url(leaky_run) -> None:
    _, answers, _ = leaky_run
    public = [a for a in answers if '"checks"' in a or "router_requests_total" in a]
    assert len(public) == 3
    for answer in public:
        assert not re.search(r"https?://|127\.0\.0\.1|localhost|redis://", answer), answer[:300]
