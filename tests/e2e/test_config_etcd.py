"""US-3 / runtime config: a router keeps routing through an etcd outage and catches up after it.

Real etcd (the session server, restarted in a finally), real router processes, one etcd prefix
per test so nothing leaks between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import PROBE_INTERVAL_S, wait_until

ADMIN = {"X-API-Key": "rk-demo-admin-key"}
USER = {"Authorization": "Bearer rk-demo-key"}


@pytest.fixture
def upstream() -> Iterator[MockBackend]:
    with MockBackend(models=("etcd-model",)) as backend:
        yield backend


def readiness_of_config(router: RouterProcess) -> dict[str, Any]:
    body = httpx.get(router.base_url + "/v1/status/readyz", timeout=5).json()
    return next(c for c in body["checks"] if c["name"] == "config")


def chat(router: RouterProcess) -> httpx.Response:
    return httpx.post(
        router.base_url + "/v1/chat/completions",
        headers=USER,
        json=chat_body("etcd-model", "through etcd"),
        timeout=10,
    )


def put_route(router: RouterProcess, upstream: MockBackend, model: str = "etcd-model") -> None:
    backend = {"base_url": upstream.openai_base_url, "models": [model]}
    assert httpx.put(
        router.base_url + "/v1/admin/backends/etcd-b", headers=ADMIN, json=backend, timeout=10
    ).is_success
    policy = {"backends": [{"backend_id": "etcd-b", "weight": 100}]}
    response = httpx.put(
        router.base_url + f"/v1/admin/models/{model}", headers=ADMIN, json=policy, timeout=10
    )
    assert response.is_success, response.text


def test_a_router_started_while_etcd_is_down_serves_the_last_known_good_config(
    etcd_server, router_factory, upstream
):
    env = {"ROUTER_ETCD_ENDPOINTS": etcd_server.endpoints, "ROUTER_ETCD_PREFIX": f"/e2e-{uuid.uuid4()}/"}
    router = router_factory(env=env, args=("--demo",))
    put_route(router, upstream)
    assert chat(router).status_code == 200
    assert readiness_of_config(router)["status"] == "pass"

    router.stop()
    etcd_server.stop()
    try:
        router.start()  # same data dir: its LMDB holds the last known good config
        answer = chat(router)
        assert (answer.status_code, answer.headers["x-routing-backend"]) == (200, "etcd-b")
        check = readiness_of_config(router)
        assert check["status"] == "warn" and "etcd" in check["details"]
    finally:
        etcd_server.start()

    assert wait_until(
        lambda: readiness_of_config(router)["status"] == "pass", timeout=10, interval=PROBE_INTERVAL_S
    ), "never caught up"
    # Changes go through again once etcd is back, and are applied.
    put_route(router, upstream, model="etcd-model-2")
    assert httpx.get(router.base_url + "/v1/admin/models/etcd-model-2", headers=ADMIN, timeout=5).is_success


def test_a_change_made_while_one_router_was_down_reaches_it_when_it_returns(
    etcd_server, router_factory, upstream
):
    env = {"ROUTER_ETCD_ENDPOINTS": etcd_server.endpoints, "ROUTER_ETCD_PREFIX": f"/e2e-{uuid.uuid4()}/"}
    a = router_factory(env=env, args=("--demo",))
    b = router_factory(env=env, args=("--demo",))
    put_route(a, upstream)
    assert wait_until(lambda: chat(b).status_code == 200, timeout=10)

    b.stop()
    response = httpx.post(
        a.base_url + "/v1/admin/backends/etcd-b/state",
        headers=ADMIN,
        json={"state": "disabled", "reason": "maintenance"},
        timeout=10,
    )
    assert response.is_success, response.text
    b.start()
    refused = chat(b)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "NO_BACKEND_AVAILABLE")
