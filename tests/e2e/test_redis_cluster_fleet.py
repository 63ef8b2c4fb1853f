"""Routers on a real Redis Cluster (ROUTER_REDIS_CLUSTER=true): two `router serve` processes share
buckets, budgets, idempotency, the audit index and revocations exactly as on one Redis, and a
coordinated failover of one master's slots (CLUSTER FAILOVER on its replica) under load loses and
doubles no budget charge.

The session cluster (tests/conftest.py: three masters and one replica) is shared; a failover swaps a
master and its replica, so the tests find nodes by role and slot, never by port.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.e2e.conftest import KEYS, MODEL, ObservedBackend, auth, runtime_config
from tests.e2e.limits.limits_support import (
    CHAT,
    LIMITS,
    PER_REQUEST,
    RESERVED,
    chat,
    headers,
)
from tests.e2e.limits.limits_support import burst as _burst
from tests.e2e.limits.limits_support import key_record_of as _key_record
from tests.e2e.test_readiness_shared import readiness
from tests.harness.backend import MockBackend
from tests.harness.config_docs import write_config
from tests.harness.errors import error_code
from tests.harness.redis_cluster import RedisClusterServer
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import PROBE_INTERVAL_S, eventually, wait_until

LOAD_WORKERS = 16
FAILOVER_LIMITS = {
    "rate_limits": {"requests_per_minute": 1_000_000, "burst": 1_000_000},
    "budgets": {"daily_tokens": 1_000_000_000},
    "failure_mode": "fail_closed",  # a request the store cannot decide gets 503, never counted locally
}


def failover_org(cluster: RedisClusterServer) -> str:
    """An organisation whose hash slot lives on the master that has a replica (the one a failover moves)."""
    master = cluster.replicated_master()
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])
    try:
        return next(
            org
            for org in (f"org-fo-{i}" for i in range(1000))
            if client.get_node_from_key(f"rl:{{{org}}}:org:requests").port == master
        )
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster_config(
    tmp_path_factory: pytest.TempPathFactory,
    backend_a: ObservedBackend,
    backend_f: MockBackend,
    redis_cluster: RedisClusterServer,
) -> tuple[Path, str]:
    org = failover_org(redis_cluster)
    config = runtime_config(backend_a, backend_f)
    config["api_keys"].extend(_key_record(o) for o in ("org-bucket250", "org-budget100", org))
    config["org_limits"] = {
        **{o: LIMITS[o] for o in ("org-bucket250", "org-budget100")},
        org: FAILOVER_LIMITS,
    }
    return write_config(tmp_path_factory.mktemp("cluster-config"), config), org


@pytest.fixture(scope="module")
def pair(
    start_router: Callable[..., RouterProcess],
    redis_cluster: RedisClusterServer,
    cluster_config: tuple[Path, str],
) -> tuple[RouterProcess, RouterProcess]:
    # Exactness is under test, not timeouts: a loaded CI machine must not turn slow answers into 503s.
    env = {
        **redis_cluster.router_env,
        "ROUTER_CONFIG_POLL_SECONDS": "0.2",
        "ROUTER_REDIS_TIMEOUT_SECONDS": "5",
    }
    return start_router(env=env, config=cluster_config[0]), start_router(env=env, config=cluster_config[0])


def budget_used(router: RouterProcess, org: str) -> int:
    state = httpx.get(
        f"{router.base_url}/v1/admin/orgs/{org}/limits", headers=auth(KEYS["admin"]), trust_env=False
    ).json()
    return int(next(b for b in state["state"]["budgets"] if b["period"] == "DAILY")["tokens_used"])


async def test_two_routers_on_a_cluster_take_exactly_the_bucket_and_never_overspend_a_budget(pair, mock):
    calls = mock.inference_requests
    bucket = [a.status_code for a in await _burst(pair, "org-bucket250", 500)]
    assert (bucket.count(200), bucket.count(429)) == (250, 250)
    budget = [a.status_code for a in await _burst(pair, "org-budget100", 300)]
    admitted = budget.count(200)
    assert 100 * PER_REQUEST // RESERVED <= admitted <= 100, budget
    assert budget.count(402) == 300 - admitted
    assert mock.inference_requests - calls == 250 + admitted
    assert (
        budget_used(pair[0], "org-budget100")
        == budget_used(pair[1], "org-budget100")
        == admitted * PER_REQUEST
    )


def test_idempotency_audit_and_revocation_are_shared_by_routers_on_a_cluster(pair, clients, mock):
    a, b = (clients.http(r) for r in pair)
    key = str(uuid.uuid4())
    body = {"request_id": key, "model": MODEL, "payload": f"replicated {key}"}
    first = a.post("/v1/inference", json=body, headers=auth(KEYS["user"]))
    on_b = b.post("/v1/inference", json=body, headers=auth(KEYS["user"]))
    assert first.status_code == on_b.status_code == 200, (first.text, on_b.text)
    assert on_b.headers["Idempotent-Replayed"] == "true" and on_b.content == first.content
    assert mock.inference_requests == 1
    # The audit index on the cluster: A's decision is found through B, by request id and in a page.
    audit = auth(KEYS["user"])
    wait_until(lambda: b.get(f"/v1/audit/requests/{key}", headers=audit).status_code == 200)
    page = b.get("/v1/audit/events", params={"limit": 200}, headers=audit)
    assert page.status_code == 200, page.text
    assert key in {e["request_id"] for e in page.json()["items"]}
    created = a.post(
        "/v1/admin/keys",
        json={"organization_id": "acme", "scopes": ["inference"]},
        headers=auth(KEYS["admin"]),
    )
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["secret"], created.json()["key"]["id"]
    wait_until(lambda: b.get("/v1/models", headers=auth(secret)).status_code == 200)
    revoked = b.post(f"/v1/admin/keys/{key_id}/revoke", json={"reason": "t"}, headers=auth(KEYS["admin"]))
    assert revoked.status_code == 200, revoked.text
    wait_until(lambda: a.get("/v1/models", headers=auth(secret)).status_code == 401)


async def test_a_failover_under_load_answers_every_request_and_loses_or_doubles_no_budget_charge(
    pair, redis_cluster, cluster_config
):
    org = cluster_config[1]
    used_before = budget_used(pair[0], org)
    answers: list[httpx.Response] = []
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            answers.append(await client.post(CHAT, json=chat(), headers=headers(org)))

    clients = [httpx.AsyncClient(base_url=r.base_url, trust_env=False, timeout=30) for r in pair]
    try:
        load = [asyncio.create_task(worker(clients[i % 2])) for i in range(LOAD_WORKERS)]
        await eventually(lambda: len(answers) >= 50, timeout=30)
        before_failover = len(answers)
        promoted = await asyncio.to_thread(redis_cluster.failover)
        during = len(answers)
        await eventually(lambda: len(answers) >= during + 100, timeout=30)  # served after the failover
        stop.set()
        await asyncio.gather(*load)
    finally:
        for client in clients:
            await client.aclose()

    statuses = [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code != 200]
    print(
        f"failover to :{promoted}: {len(answers)} answers ({before_failover} before), refused {len(refused)}"
    )
    for answer in refused:  # the documented refusal while a slot moves: 503 with Retry-After
        assert answer.status_code == 503 and "Retry-After" in answer.headers, (
            answer.status_code,
            answer.text,
        )
        assert error_code(answer) in {"SERVICE_UNAVAILABLE", "LIMITS_UNAVAILABLE"}, answer.text
    assert all(s == 200 for s in statuses[-50:]), statuses[-50:]
    # Every answered request is charged once: its reservation settled to what the backend billed.
    expected = used_before + statuses.count(200) * PER_REQUEST
    await eventually(lambda: budget_used(pair[0], org) == expected, timeout=10)
    assert budget_used(pair[1], org) == expected


def test_readiness_fails_while_any_master_of_the_cluster_does_not_answer(pair, redis_cluster):
    """Each master in turn stops answering clients (CLIENT PAUSE: the cluster itself sees no failure):
    readiness fails its idempotency check, whichever master it is, and recovers by itself. Before,
    readiness pinged one node only and passed while another master was down."""
    http = httpx.Client(base_url=pair[0].base_url, trust_env=False, timeout=10)
    masters = [port for port, role in redis_cluster.roles().items() if role == "master"]
    assert len(masters) == 3
    for port in masters:
        assert readiness(http)[0] == 200
        assert "OK" in redis_cluster.cli_run(port, "client", "pause", "4000", "all")
        # Within the pause: readiness is cached for 1 s, then the PING of every master fails.
        # Polled gently: the probe guard refuses a client probing over 20 times a second.
        _, checks = wait_until(
            lambda: (r := readiness(http))[0] == 503 and r,
            timeout=3,
            interval=PROBE_INTERVAL_S,
            what=str(port),
        )
        assert checks["idempotency"][0] == "fail", checks
        wait_until(lambda: readiness(http)[0] == 200, timeout=10, interval=PROBE_INTERVAL_S)
    http.close()
