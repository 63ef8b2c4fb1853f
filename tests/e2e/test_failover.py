"""US-3: traffic keeps flowing when a backend fails, and comes back when it recovers.

One model on two real backends: ``primary`` (weight 100) and ``standby`` (weight 0, failover
only). The router's breaker cools down in 0.5 s and backends probe every second, so recovery is
observable within a test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import records_for
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, failover_model, key_record, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until
from tests.telemetry.test_metrics import value as metric

MODEL = "fo-model"
KEY = "rk_e2e_failover_key"


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, primary_and_standby: tuple[MockBackend, MockBackend]
) -> Iterator[RouterProcess]:
    primary, standby = primary_and_standby
    health = {"path": "/health", "interval_seconds": 1, "timeout_ms": 300}
    config: dict[str, Any] = {
        "backends": [
            backend_doc(
                "primary",
                primary.openai_base_url,
                MODEL,
                connect_timeout_ms=200,
                timeout_ms=2000,
                health_check=health,
            ),
            backend_doc("standby", standby.openai_base_url, MODEL, health_check=dict(health)),
        ],
        "models": [failover_model(MODEL, "primary", "standby", failover_threshold=3, warmup_seconds=0)],
        "api_keys": [key_record("key-fo", "org-fo", KEY)],
    }
    workdir = tmp_path_factory.mktemp("failover")
    path = write_config(workdir, config, "config.yaml")
    fleet = RouterFleet(workdir)
    yield fleet.start(
        env={
            "ROUTER_CONFIG_PATH": str(path),
            "ROUTER_BREAKER_COOL_DOWN_SECONDS": "0.5",
            "ROUTER_ACCESS_LOG": "false",
        }
    )
    fleet.close()


def ask(http: httpx.Client) -> tuple[httpx.Response, str]:
    request_id = f"fo-{uuid.uuid4()}"
    response = http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": request_id},
        json=chat_body(MODEL, "are you there"),
    )
    return response, request_id


@pytest.fixture
def http(router: RouterProcess, pair: tuple[MockBackend, MockBackend]) -> Iterator[httpx.Client]:
    """A client, once the router routes to the primary again (an earlier test may have killed it)."""
    with httpx.Client(base_url=router.base_url, trust_env=False, timeout=10) as client:
        assert routes_to_primary(client), "the router never took the restarted primary back"
        for backend in pair:
            backend.reset_counters()
        yield client


def routes_to_primary(http: httpx.Client, within: float = 8.0) -> bool:
    def served_by_primary() -> bool:
        response, _ = ask(http)
        return response.status_code == 200 and response.headers["x-routing-backend"] == "primary"

    return wait_until(served_by_primary, timeout=within, interval=0.2, what="a request served by the primary")


def test_a_healthy_primary_serves_everything_as_primary(http, pair):
    _, standby = pair
    answers = [ask(http)[0] for _ in range(10)]
    assert {
        (r.status_code, r.headers["x-routing-backend"], r.headers["x-routing-decision"]) for r in answers
    } == {(200, "primary", "PRIMARY")}
    assert standby.inference_requests == 0


def test_killing_the_primary_loses_no_request_and_failover_is_visible(http, router, pair):
    primary, _ = pair
    primary.stop()
    answers = [ask(http) for _ in range(20)]
    assert [r.status_code for r, _ in answers] == [200] * 20, "a client saw an error during failover"
    assert {r.headers["x-routing-backend"] for r, _ in answers} == {"standby"}
    assert {r.headers["x-routing-decision"] for r, _ in answers} == {"FAILOVER"}
    # The first request paid for the failed attempt; one usage record, its retry counted.
    first = wait_until(lambda: records_for(router, answers[0][1]))
    assert len(first) == 1 and first[0]["decision_reason"] == "FAILOVER" and first[0]["retry_count"] == 1
    # Once the breaker is open the dead primary is not even tried: the warning says why.
    assert "primary" in answers[-1][0].headers.get("x-routing-warning", "")
    # ... and the metrics an alert watches say so too.
    metrics = http.get("/metrics").text
    assert metric(metrics, "router_failovers_total", model=MODEL) >= 20
    assert metric(metrics, "router_breaker_opened_total", backend="primary") >= 1
    assert metric(metrics, "router_backend_up", backend="primary") == 0
    # Open (2), or already half-open (1): the module's cool-down is 0.5 s, for the recovery tests.
    assert metric(metrics, "router_breaker_state", backend="primary") in (1, 2)
    assert metric(metrics, "router_backend_requests_total", backend="primary", outcome="connect_error") >= 1

    # Readiness drops the primary once a health probe (every 1 s) has failed; until then a half-open
    # breaker lists it as degraded.
    def without_primary() -> dict[str, Any] | None:
        ready = http.get("/v1/status/readyz").json()
        return ready if "primary" not in ready["ready_backend_ids"] + ready["degraded_backend_ids"] else None

    ready = wait_until(without_primary, timeout=5, what="readiness without the dead primary")
    assert "standby" in ready["ready_backend_ids"]


def test_a_primary_answering_503_fails_over_within_the_request(http, pair):
    primary, standby = pair
    primary.configure(fixed_status=503)
    response, _ = ask(http)
    assert (response.status_code, response.headers["x-routing-backend"]) == (200, "standby")
    assert primary.inference_requests == 1 and standby.inference_requests == 1


def test_a_primary_answering_500_is_not_retried(http, pair):
    primary, standby = pair
    primary.configure(fixed_status=500)
    response, _ = ask(http)
    assert (response.status_code, response.json()["error"]["code"]) == (502, "BACKEND_ERROR")
    assert standby.inference_requests == 0


def test_traffic_returns_to_the_primary_after_it_recovers(http, pair):
    primary, _ = pair
    primary.stop()
    for _ in range(5):
        assert ask(http)[0].status_code == 200
    primary.start()
    assert routes_to_primary(http), "traffic never returned to the recovered primary"
    assert [ask(http)[0].headers["x-routing-decision"] for _ in range(5)] == ["PRIMARY"] * 5
