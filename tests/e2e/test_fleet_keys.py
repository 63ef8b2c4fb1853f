"""Keys in a fleet: routers sharing one etcd agree on every key and revocation within a second, a
replaced replica (empty data dir) loses none, and the first admin key comes from a configured hash.

Real etcd (the session server, one prefix per test), real `router serve` processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from router_impl.auth.keys import hash_secret
from tests.harness.router_proc import RouterProcess

BOOTSTRAP_SECRET = "rk_bootstrap-" + "b" * 40  # what an operator keeps in a password manager
SECRET_KEY = "fleet-router-secret-key-0123456789abcdef"
ROUTER_BIN = Path(sys.executable).with_name("router")
PROPAGATION_S = 1.0


@pytest.fixture
def fleet_env(etcd_server) -> dict[str, str]:
    return {
        "ROUTER_ETCD_ENDPOINTS": etcd_server.endpoints,
        "ROUTER_ETCD_PREFIX": f"/fleet-{uuid.uuid4()}/",
        "ROUTER_SECRET_KEY": SECRET_KEY,
        "ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256": hash_secret(BOOTSTRAP_SECRET),
    }


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


_clients: dict[str, httpx.Client] = {}


def models(router: RouterProcess, secret: str) -> int:
    """GET /v1/models over one kept-alive client per router (a new httpx client costs ~0.3 s here,
    which would swamp the propagation being measured)."""
    client = _clients.get(router.base_url)
    if client is None:
        client = _clients[router.base_url] = httpx.Client(base_url=router.base_url, timeout=5)
    return client.get("/v1/models", headers=auth(secret)).status_code


def create_key(router: RouterProcess, admin: str, org: str = "acme", **extra) -> httpx.Response:
    body = {"organization_id": org, "scopes": ["inference"], **extra}
    return httpx.post(router.base_url + "/v1/admin/keys", headers=auth(admin), json=body, timeout=10)


def time_until(predicate, within: float = 5.0) -> float:
    """Seconds until ``predicate`` holds (polled every 5 ms); fails after ``within``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > within:
            pytest.fail(f"not within {within} s")
        time.sleep(0.005)
    return time.monotonic() - began


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def cli_list(router: RouterProcess, admin: str) -> set[str]:
    listed = subprocess.run(
        [
            str(ROUTER_BIN),
            "keys",
            "--url",
            router.base_url,
            "--admin-key",
            admin,
            "list",
            "--json",
            "--limit",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    return {k["id"] for k in json.loads(listed.stdout)["items"]}


def test_a_key_created_on_one_replica_works_on_the_others_and_a_revoke_anywhere_holds_everywhere(
    router_factory, fleet_env
):
    a, b, c = (router_factory(env=fleet_env) for _ in range(3))
    # An empty etcd: the only way in is the bootstrap admin key, on every replica.
    assert all(models(r, BOOTSTRAP_SECRET) == 403 for r in (a, b, c))  # admin scope only: known, not allowed
    assert all(models(r, "rk_unknown") == 401 for r in (a, b, c))  # the first 401 of a process is slow
    admin = create_key(a, BOOTSTRAP_SECRET, org="operators", scopes=["admin", "audit"]).json()["secret"]

    created: list[tuple[str, str]] = []
    seen_on_b: list[float] = []
    for _ in range(20):
        answer = create_key(a, admin)
        assert answer.status_code == 201, answer.text
        created.append((answer.json()["key"]["id"], answer.json()["secret"]))
        seen_on_b.append(time_until(lambda s=created[-1][1]: models(b, s) == 200))
    print(f"create on A -> accepted on B (ms): {sorted(round(s * 1000) for s in seen_on_b)}")
    assert p99(seen_on_b) < PROPAGATION_S

    refused_on_a: list[float] = []
    for key_id, secret in created[:10]:
        assert models(a, secret) == 200
        revoked = httpx.post(
            b.base_url + f"/v1/admin/keys/{key_id}/revoke",
            headers=auth(admin),
            json={"reason": "t"},
            timeout=10,
        )
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        refused_on_a.append(time_until(lambda s=secret: models(a, s) == 401))
    print(f"revoke on B -> refused on A (ms): {sorted(round(s * 1000) for s in refused_on_a)}")
    assert p99(refused_on_a) < PROPAGATION_S

    # `router keys list` agrees on every replica: the bootstrap key, the admin key and the 20.
    lists = [cli_list(r, admin) for r in (a, b, c)]
    assert lists[0] == lists[1] == lists[2]
    assert {key_id for key_id, _ in created} <= lists[0] and "bootstrap-admin" in lists[0]

    # A replaced pod: A's data dir is gone; it still knows every key and every revocation.
    a.stop()
    import shutil

    shutil.rmtree(a.data_dir)
    a.start()
    assert [models(a, secret) for _, secret in created] == [401] * 10 + [200] * 10
    assert cli_list(a, admin) == lists[1]


def test_key_changes_are_audited_with_the_admin_and_the_key_id_but_never_the_secret(
    router_factory, fleet_env
):
    a = router_factory(env=fleet_env)
    began = datetime.now(UTC) - timedelta(seconds=5)
    admin_answer = create_key(a, BOOTSTRAP_SECRET, org="operators", scopes=["admin", "audit"]).json()
    admin, admin_id = admin_answer["secret"], admin_answer["key"]["id"]
    made = create_key(a, admin, org="operators").json()
    httpx.post(a.base_url + f"/v1/admin/keys/{made['key']['id']}/revoke", headers=auth(admin), timeout=10)

    def events(action: str) -> list[dict]:
        until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        params = {"action": action, "since": began.isoformat(), "until": until}
        answer = httpx.get(a.base_url + "/v1/audit/events", params=params, headers=auth(admin), timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]

    created = events("KEY_CREATED")  # newest first
    assert [(e["actor"], e["metadata"]["key_id"]) for e in created] == [
        (admin_id, made["key"]["id"]),
        ("bootstrap-admin", admin_id),
    ]
    revoked = events("KEY_REVOKED")
    assert [(e["actor"], e["metadata"]["key_id"]) for e in revoked] == [(admin_id, made["key"]["id"])]
    text = json.dumps(created + revoked) + a.log_text()
    for secret in (admin, made["secret"], BOOTSTRAP_SECRET):
        assert secret not in text


def test_a_signing_key_is_refused_in_a_fleet_without_a_shared_secret_key(router_factory, fleet_env):
    env = {k: v for k, v in fleet_env.items() if k != "ROUTER_SECRET_KEY"}
    a = router_factory(env=env)
    refused = create_key(a, BOOTSTRAP_SECRET, signature_required=True)
    assert refused.status_code == 503
    assert refused.json()["code"] == "SERVICE_UNAVAILABLE" and "ROUTER_SECRET_KEY" in refused.json()["error"]
    assert create_key(a, BOOTSTRAP_SECRET).status_code == 201  # keys without a signing secret are fine


def test_revoking_the_bootstrap_admin_key_holds_on_every_replica(router_factory, fleet_env):
    a, b = router_factory(env=fleet_env), router_factory(env=fleet_env)
    admin = create_key(a, BOOTSTRAP_SECRET, org="operators", scopes=["admin"]).json()["secret"]
    revoked = httpx.post(
        b.base_url + "/v1/admin/keys/bootstrap-admin/revoke", headers=auth(admin), timeout=10
    )
    assert revoked.status_code == 200, revoked.text
    time_until(lambda: create_key(a, BOOTSTRAP_SECRET).status_code == 401, within=PROPAGATION_S * 3)
    assert create_key(b, BOOTSTRAP_SECRET).status_code == 401


def test_keys_created_concurrently_on_two_replicas_all_succeed_and_both_list_them_all(
    router_factory, fleet_env
):
    from concurrent.futures import ThreadPoolExecutor

    a, b = router_factory(env=fleet_env), router_factory(env=fleet_env)

    def create(index: int) -> httpx.Response:
        return create_key((a, b)[index % 2], BOOTSTRAP_SECRET, name=f"burst-{index}")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(create, range(48)))
    assert [r.status_code for r in answers] == [201] * 48, [r.text for r in answers if r.status_code != 201]
    made = {r.json()["key"]["id"] for r in answers}
    time_until(lambda: made <= cli_list(a, BOOTSTRAP_SECRET) and made <= cli_list(b, BOOTSTRAP_SECRET))
