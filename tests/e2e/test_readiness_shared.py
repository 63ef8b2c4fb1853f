"""Issue 15.4: readiness tells the truth about the shared stores the request path depends on.

Before: with ROUTER_REDIS_URL pointing at nothing, readyz answered 200 "shared limit store reachable"
while every /v1/inference answered 503 "Idempotency store unavailable".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from tests.e2e.conftest import KEYS, MODEL, Clients, auth, dumps
from tests.harness.errors import error_code
from tests.harness.ports import free_port
from tests.harness.router_proc import RouterProcess
from tests.harness.services import RedisServer
from tests.harness.wait import PROBE_INTERVAL_S, wait_until


def readiness(http: httpx.Client) -> tuple[int, dict[str, tuple[str, str]]]:
    answer = http.get("/v1/status/readyz")
    assert answer.status_code in (200, 503), answer.text  # not the probe guard's 429: poll gently
    return answer.status_code, {c["name"]: (c["status"], c["details"]) for c in answer.json()["checks"]}


def inference(http: httpx.Client) -> httpx.Response:
    body = {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "ready?"}
    return http.post(
        "/v1/inference",
        content=dumps(body),
        headers={"Content-Type": "application/json", **auth(KEYS["user"])},
    )


def test_redis_pointing_at_nothing_makes_readiness_fail_and_name_it(
    clients: Clients, mock, start_router: Callable[..., RouterProcess]
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    router = start_router(env={"ROUTER_REDIS_URL": nowhere})
    http = clients.http(router)
    refused = inference(http)
    assert refused.status_code == 503, refused.text
    status, checks = readiness(http)
    assert status == 503
    assert checks["idempotency"][0] == "fail" and "Redis" in checks["idempotency"][1]
    assert checks["limits"][0] == "warn" and "unreachable" in checks["limits"][1]
    assert checks["nonces"][0] == "warn"
    assert str(nowhere.split("//")[1].split("/")[0]) not in str(checks)  # no hosts in health bodies


def test_readiness_follows_redis_down_and_back(
    clients: Clients, mock, start_router: Callable[..., RouterProcess], own_redis: RedisServer
) -> None:
    router = start_router(env={"ROUTER_REDIS_URL": own_redis.url})
    http = clients.http(router)
    assert inference(http).status_code == 200
    status, checks = readiness(http)
    assert status == 200
    assert {name: checks[name][0] for name in ("idempotency", "limits", "nonces")} == dict.fromkeys(
        ("idempotency", "limits", "nonces"), "pass"
    )
    own_redis.stop()
    assert wait_until(lambda: readiness(http)[0] == 503, timeout=5.0, interval=PROBE_INTERVAL_S)
    assert (inference(http).status_code, error_code(inference(http))) == (503, "SERVICE_UNAVAILABLE")
    own_redis.start()
    assert wait_until(lambda: readiness(http)[0] == 200, timeout=10.0, interval=PROBE_INTERVAL_S)
    assert wait_until(lambda: inference(http).status_code == 200, timeout=5.0)
