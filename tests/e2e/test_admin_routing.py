"""Operators change routing through the admin API, without a redeploy: backends, model policies,
the kill switch and degraded flag, recent routing decisions; with a file source (persisted across
a restart) and with etcd shared by two routers (a change on one is applied by the other).

Every response is validated against the contract (the ``clients`` fixture checks each one).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from etcd3aio import Etcd3Client

from router_impl.config.layout import explode
from router_impl.config.model import RuntimeConfig
from tests.e2e.conftest import Clients, auth
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, key_record, write_config
from tests.harness.errors import error_code
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.services import EtcdServer

MODEL = "adm-model"
ADMIN_KEY = "rk_e2e_admin_routing"
USER_KEY = "rk_e2e_admin_routing_user"
ORG = "org-adm"


def _keys() -> list[dict[str, Any]]:
    return [key_record("key-adm", ORG, ADMIN_KEY, ["admin"]), key_record("key-adm-user", ORG, USER_KEY)]


ADMIN = auth(ADMIN_KEY)
USER = auth(USER_KEY)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[MockBackend, MockBackend]]:
    with MockBackend(models=(MODEL,)) as one, MockBackend(models=(MODEL,)) as two:
        yield one, two


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("admin-routing"), {"api_keys": _keys()})


@pytest.fixture(scope="module")
def admin_router(tmp_path_factory: pytest.TempPathFactory, config_file: Path) -> Iterator[RouterProcess]:
    fleet = RouterFleet(tmp_path_factory.mktemp("admin-routing-routers"))
    yield fleet.start(env={"ROUTER_CONFIG_PATH": str(config_file), "ROUTER_ACCESS_LOG": "false"})
    fleet.close()


@pytest.fixture
def http(clients: Clients, admin_router: RouterProcess) -> httpx.Client:
    return clients.http(admin_router)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def backend_body(upstream: MockBackend, **extra: Any) -> dict[str, Any]:
    return {"base_url": upstream.openai_base_url, "models": [MODEL], **extra}


def policy_body(*backend_ids: str, **extra: Any) -> dict[str, Any]:
    return {
        "backends": [{"backend_id": b, "weight": 100} for b in backend_ids],
        "warmup_seconds": 0,
        **extra,
    }


def ask(http: httpx.Client, model: str) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        headers={**USER, "X-Request-ID": f"adm-{uuid.uuid4()}"},
        json=chat_body(model, "hello"),
    )


def served_by(http: httpx.Client, model: str, n: int) -> Counter[str]:
    answers = [ask(http, model) for _ in range(n)]
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers if r.status_code != 200]
    return Counter(r.headers["x-routing-backend"] for r in answers)


def setup_pair(http: httpx.Client, upstreams: tuple[MockBackend, MockBackend]) -> tuple[str, str, str]:
    """Two new backends and a new model routed 50/50 over them."""
    one, two = unique("bk-a"), unique("bk-b")
    model = unique("m")
    for backend_id, upstream in ((one, upstreams[0]), (two, upstreams[1])):
        assert (
            http.put(
                f"/v1/admin/backends/{backend_id}", headers=ADMIN, json=backend_body(upstream)
            ).status_code
            == 201
        )
    response = http.put(f"/v1/admin/models/{model}", headers=ADMIN, json=policy_body(one, two))
    assert response.status_code == 201, response.text
    return one, two, model


# ---------------------------------------------------------------- file source


def test_a_backend_and_policy_created_through_the_api_take_traffic(
    http: httpx.Client, upstreams: tuple[MockBackend, MockBackend]
) -> None:
    backend_id, model = unique("bk"), unique("m")
    created = http.put(
        f"/v1/admin/backends/{backend_id}",
        headers=ADMIN,
        json=backend_body(upstreams[0], labels={"zone": "a"}),
    )
    assert created.status_code == 201, created.text
    status = created.json()
    assert status["id"] == backend_id
    assert (status["state"], status["breaker_state"], status["in_flight"]) == ("healthy", "closed", 0)
    assert status["error_ratio"] == 0 and status["weight_factor"] == 1
    assert status["labels"] == {"zone": "a"}

    replaced = http.put(
        f"/v1/admin/backends/{backend_id}", headers=ADMIN, json=backend_body(upstreams[0], timeout_ms=5000)
    )
    assert replaced.status_code == 200 and replaced.json()["timeout_ms"] == 5000

    policy = http.put(f"/v1/admin/models/{model}", headers=ADMIN, json=policy_body(backend_id))
    assert policy.status_code == 201, policy.text
    assert policy.json()["model"] == model and policy.json()["backends"] == [
        {"backend_id": backend_id, "weight": 100}
    ]
    again = http.put(
        f"/v1/admin/models/{model}", headers=ADMIN, json={**policy_body(backend_id), "model": model}
    )
    assert again.status_code == 200

    answer = ask(http, model)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-routing-backend"] == backend_id

    listed = http.get("/v1/admin/backends", headers=ADMIN)
    assert listed.status_code == 200
    mine = {b["id"]: b for b in listed.json()["items"]}[backend_id]
    assert mine["state"] == "healthy" and mine["breaker_state"] == "closed"
    one = http.get(f"/v1/admin/backends/{backend_id}", headers=ADMIN)
    assert one.status_code == 200 and one.json()["timeout_ms"] == 5000
    assert "api_key_env" not in one.json()

    assert (
        http.get(f"/v1/admin/models/{model}", headers=ADMIN).json()["backends"][0]["backend_id"] == backend_id
    )
    models = http.get("/v1/admin/models", headers=ADMIN)
    assert model in {p["model"] for p in models.json()["items"]}


def test_a_disabled_backend_gets_no_traffic_and_a_degraded_one_none_while_another_is_healthy(
    http: httpx.Client, upstreams: tuple[MockBackend, MockBackend]
) -> None:
    one, two, model = setup_pair(http, upstreams)
    assert set(served_by(http, model, 30)) == {one, two}

    disabled = http.post(
        f"/v1/admin/backends/{two}/state", headers=ADMIN, json={"state": "disabled", "reason": "maintenance"}
    )
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["state"], disabled.json()["state_reason"]) == ("disabled", "maintenance")
    assert served_by(http, model, 20) == Counter({one: 20})
    assert http.get(f"/v1/admin/backends/{two}", headers=ADMIN).json()["state"] == "disabled"

    degraded = http.post(
        f"/v1/admin/backends/{two}/state", headers=ADMIN, json={"state": "degraded", "reason": "slow"}
    )
    assert degraded.status_code == 200 and degraded.json()["state"] == "degraded"
    assert served_by(http, model, 20) == Counter({one: 20})

    healthy = http.post(
        f"/v1/admin/backends/{two}/state", headers=ADMIN, json={"state": "healthy", "reason": "fixed"}
    )
    assert healthy.status_code == 200 and healthy.json()["state"] == "healthy"
    assert set(served_by(http, model, 30)) == {one, two}


def test_conflicts_and_unknown_ids(http: httpx.Client, upstreams: tuple[MockBackend, MockBackend]) -> None:
    one, two, model = setup_pair(http, upstreams)
    http.post(f"/v1/admin/backends/{two}/state", headers=ADMIN, json={"state": "disabled", "reason": "x"})

    referenced = http.delete(f"/v1/admin/backends/{one}", headers=ADMIN)
    assert referenced.status_code == 409 and error_code(referenced) == "CONFLICT"
    assert model in referenced.json()["error"]

    ghost = unique("ghost")
    dangling = http.put(f"/v1/admin/models/{unique('m')}", headers=ADMIN, json=policy_body(one, ghost))
    assert dangling.status_code == 409 and error_code(dangling) == "CONFLICT"
    assert ghost in dangling.json()["error"]

    mismatch = http.put(
        f"/v1/admin/models/{model}", headers=ADMIN, json={**policy_body(one), "model": "other"}
    )
    assert mismatch.status_code == 400 and error_code(mismatch) == "VALIDATION_ERROR"

    for response in (
        http.get(f"/v1/admin/backends/{ghost}", headers=ADMIN),
        http.delete(f"/v1/admin/backends/{ghost}", headers=ADMIN),
        http.post(
            f"/v1/admin/backends/{ghost}/state", headers=ADMIN, json={"state": "disabled", "reason": "x"}
        ),
        http.get(f"/v1/admin/models/{ghost}", headers=ADMIN),
        http.delete(f"/v1/admin/models/{ghost}", headers=ADMIN),
    ):
        assert response.status_code == 404 and error_code(response) == "NOT_FOUND", response.text

    # Once no policy uses them, the backends go (a disabled one with its state).
    assert http.delete(f"/v1/admin/models/{model}", headers=ADMIN).status_code == 204
    assert http.get(f"/v1/admin/models/{model}", headers=ADMIN).status_code == 404
    assert ask(http, model).status_code == 404
    for backend_id in (one, two):
        assert http.delete(f"/v1/admin/backends/{backend_id}", headers=ADMIN).status_code == 204
        assert http.get(f"/v1/admin/backends/{backend_id}", headers=ADMIN).status_code == 404


def test_routing_decisions_list_recent_requests_by_model(
    http: httpx.Client, upstreams: tuple[MockBackend, MockBackend]
) -> None:
    one, two, model = setup_pair(http, upstreams)
    _, _, other = setup_pair(http, upstreams)
    sent = [ask(http, model) for _ in range(3)]
    ask(http, other)
    response = http.get("/v1/admin/routing/decisions", headers=ADMIN, params={"model": model, "limit": 10})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [d["request_id"] for d in items] == [r.headers["x-request-id"] for r in reversed(sent)]
    assert {(d["model"], d["organization_id"], d["api_key_id"], d["decision"]) for d in items} == {
        (model, ORG, "key-adm-user", "PRIMARY")
    }
    assert {d["backend_id"] for d in items} <= {one, two}
    limited = http.get(
        "/v1/admin/routing/decisions", headers=ADMIN, params={"organization_id": ORG, "limit": 2}
    )
    assert len(limited.json()["items"]) == 2


def test_a_key_without_admin_scope_is_forbidden(http: httpx.Client) -> None:
    for response in (
        http.get("/v1/admin/backends", headers=USER),
        http.put(
            "/v1/admin/backends/nope", headers=USER, json={"base_url": "http://x.test/v1", "models": ["m"]}
        ),
        http.get("/v1/admin/models", headers=USER),
        http.get("/v1/admin/routing/decisions", headers=USER),
    ):
        assert response.status_code == 403 and error_code(response) == "FORBIDDEN"


def test_changes_survive_a_router_restart(
    clients: Clients,
    admin_router: RouterProcess,
    config_file: Path,
    upstreams: tuple[MockBackend, MockBackend],
) -> None:
    http = clients.http(admin_router)
    backend_id, model = unique("bk-keep"), unique("m-keep")
    assert (
        http.put(
            f"/v1/admin/backends/{backend_id}", headers=ADMIN, json=backend_body(upstreams[0])
        ).status_code
        == 201
    )
    assert (
        http.put(f"/v1/admin/models/{model}", headers=ADMIN, json=policy_body(backend_id)).status_code == 201
    )
    stored = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert backend_id in {b["id"] for b in stored["backends"]}
    assert model in {m["model"] for m in stored["models"]}

    admin_router.restart()
    http = clients.http(admin_router)
    assert http.get(f"/v1/admin/backends/{backend_id}", headers=ADMIN).status_code == 200
    assert http.get(f"/v1/admin/models/{model}", headers=ADMIN).status_code == 200
    answer = ask(http, model)
    assert answer.status_code == 200 and answer.headers["x-routing-backend"] == backend_id


# ---------------------------------------------------------------- etcd, two routers


async def _seed(etcd_server: EtcdServer, prefix: str, config: RuntimeConfig) -> None:
    async with Etcd3Client([etcd_server.endpoints]) as client:
        assert client.kv is not None
        for key, value in explode(config).items():
            await client.kv.put(prefix + key, value)


def test_a_policy_put_on_one_router_is_applied_by_another_sharing_etcd(
    etcd_server: EtcdServer,
    tmp_path_factory: pytest.TempPathFactory,
    clients: Clients,
    upstreams: tuple[MockBackend, MockBackend],
) -> None:
    prefix = f"/e2e-admin/{uuid.uuid4().hex}/"
    backend = backend_doc("etcd-bk", upstreams[0].openai_base_url, MODEL)
    asyncio.run(
        _seed(etcd_server, prefix, RuntimeConfig.model_validate({"backends": [backend], "api_keys": _keys()}))
    )
    env = {
        "ROUTER_ETCD_ENDPOINTS": etcd_server.endpoints,
        "ROUTER_ETCD_PREFIX": prefix,
        "ROUTER_ACCESS_LOG": "false",
    }
    fleet = RouterFleet(tmp_path_factory.mktemp("admin-etcd"))
    try:
        router_a, router_b = fleet.start(env=env), fleet.start(env=env)
        a, b = clients.http(router_a), clients.http(router_b)
        model = unique("m-etcd")
        assert b.get(f"/v1/admin/models/{model}", headers=ADMIN).status_code == 404

        started = time.monotonic()
        put = a.put(f"/v1/admin/models/{model}", headers=ADMIN, json=policy_body("etcd-bk"))
        assert put.status_code == 201, put.text
        propagation = None
        while time.monotonic() - started < 5.0:
            if b.get(f"/v1/admin/models/{model}", headers=ADMIN).status_code == 200:
                propagation = time.monotonic() - started
                break
            time.sleep(0.01)
        print(f"\npropagation A -> B: {propagation if propagation is None else round(propagation * 1000)} ms")
        assert propagation is not None and propagation < 2.0

        answer = ask(b, model)
        assert answer.status_code == 200 and answer.headers["x-routing-backend"] == "etcd-bk"
    finally:
        fleet.close()
