"""US-2 end to end: rate limits hold across two routers sharing one Redis (bursts, 500 concurrent
requests, resets, PUT and PATCH of limits, Redis outages, workers, clock skew). Budgets:
tests/e2e/limits/test_budgets.py; shared parts: tests/e2e/limits/limits_support.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.conftest import (
    KEYS,
    MODEL,
    SECRET_KEY,
    auth,
    records_for,
)
from tests.e2e.limits.limits_support import (
    CHAT,
    burst,
    chat,
    headers,
    limit_events,
    secret_of,
)
from tests.harness.clock_shift import shifted_env
from tests.harness.errors import error_code
from tests.harness.router_proc import RouterProcess, router_command
from tests.harness.services import RedisServer
from tests.harness.wait import wait_until
from tests.telemetry.test_metrics import value as metric


def test_a_burst_over_the_bucket_gets_429_with_retry_after_and_never_reaches_the_backend(pair, clients, mock):
    http = clients.http(pair[0])
    for _ in range(5):
        answer = http.post(CHAT, json=chat(), headers=headers("org-burst"))
        assert answer.status_code == 200, answer.text
    assert answer.headers["RateLimit-Limit"] == "5"
    assert answer.headers["RateLimit-Remaining"] == "0"
    calls = mock.inference_requests
    denied = clients.http(pair[1]).post(CHAT, json=chat(), headers=headers("org-burst", "lim-burst-denied"))
    assert denied.status_code == 429
    assert error_code(denied) == "RATE_LIMIT_EXCEEDED"
    assert denied.headers["Retry-After"] == "10"  # 6 per minute: one request every 10 s
    assert denied.headers["RateLimit-Remaining"] == "0"
    assert mock.inference_requests == calls
    # The same denial in the contract's shape on /v1/inference.
    inference = http.post(
        "/v1/inference",
        json={"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "tok tok"},
        headers=auth(secret_of("org-burst")),
    )
    assert inference.status_code == 429, inference.text
    body = inference.json()
    assert body["code"] == "RATE_LIMIT_EXCEEDED"
    assert 1 <= body["retry_after_seconds"] <= 10
    assert body["limit_context"]["scope"] == "org"
    assert body["limit_context"]["limit"] == 5
    assert mock.inference_requests == calls
    assert metric(http.get("/metrics").text, "router_rate_limit_denials_total", scope="org") >= 1
    # The denial is accounted for: a usage record with its limit state, and an audit event.
    records = wait_until(lambda: records_for(pair[1], "lim-burst-denied"))
    assert [(r["limit_state"], r["decision_reason"], r["tokens_input"]) for r in records] == [
        ("RATE_LIMITED", "RATE_LIMIT", 0)
    ]
    audit = http.get("/v1/audit/requests/lim-burst-denied", headers=auth(secret_of("org-burst")))
    assert audit.status_code == 200, audit.text
    assert (audit.json()["action"], audit.json()["limit_state"]) == ("REQUEST_DENIED", "RATE_LIMITED")


async def test_500_concurrent_requests_on_two_routers_take_exactly_the_250_in_the_bucket(pair, mock):
    calls = mock.inference_requests
    answers = await burst(pair, "org-bucket250", 500)
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 250, (statuses, limit_events(pair))
    assert statuses.count(429) == 250
    assert mock.inference_requests - calls == 250


def test_admin_reset_clears_buckets_and_the_next_request_is_allowed(pair, clients):
    http = clients.http(pair[0])
    for _ in range(2):
        assert http.post(CHAT, json=chat(), headers=headers("org-reset")).status_code == 200
    assert http.post(CHAT, json=chat(), headers=headers("org-reset")).status_code == 429
    before = http.get("/v1/admin/orgs/org-reset/limits", headers=auth(KEYS["admin"])).json()
    assert before["state"]["requests_remaining"] == 0
    reset = http.post(
        "/v1/admin/orgs/org-reset/limits/reset",
        json={"scope": "buckets", "reason": "customer escalation"},
        headers={**auth(KEYS["admin"]), "X-Request-ID": "lim-reset-1"},
    )
    assert reset.status_code == 200, reset.text
    assert "org_bucket:requests" in reset.json()["cleared"]
    assert clients.http(pair[1]).post(CHAT, json=chat(), headers=headers("org-reset")).status_code == 200
    events = http.get(
        "/v1/audit/events",
        params={"organization_id": "org-reset", "action": "LIMIT_RESET"},
        headers=auth(KEYS["admin"]),
    )
    if events.status_code != 403:  # the admin key may lack scope audit; the request-id lookup covers it
        assert any(e["request_id"] == "lim-reset-1" for e in events.json()["items"])
    forbidden = http.post(
        "/v1/admin/orgs/org-reset/limits/reset", json={"reason": "x"}, headers=auth(secret_of("org-reset"))
    )
    assert forbidden.status_code == 403


def test_put_limits_reaches_both_routers_and_is_enforced(pair, clients):
    http = clients.http(pair[0])
    org = "org-put"
    put = http.put(
        f"/v1/admin/orgs/{org}/limits",
        json={"rate_limits": {"requests_per_minute": 1, "burst": 1}, "budgets": {"daily_usd": 12.5}},
        headers=auth(KEYS["admin"]),
    )
    assert put.status_code == 200, put.text
    assert put.json()["limits"]["budgets"] == {"daily_usd": 12.5}
    seen = wait_until(
        lambda: (
            clients.http(pair[1])
            .get(f"/v1/admin/orgs/{org}/limits", headers=auth(KEYS["admin"]))
            .json()["limits"]
            .get("rate_limits")
        ),
        timeout=5,
    )
    assert seen == {"requests_per_minute": 1, "burst": 1}
    assert clients.http(pair[0]).post(CHAT, json=chat(), headers=headers(org)).status_code == 200
    assert clients.http(pair[1]).post(CHAT, json=chat(), headers=headers(org)).status_code == 429
    invalid = http.put(
        f"/v1/admin/orgs/{org}/limits", json={"rate_limits": {"burst": 0}}, headers=auth(KEYS["admin"])
    )
    assert invalid.status_code == 400


def test_redis_down_fail_open_limits_locally_fail_closed_answers_503_and_both_recover(
    start_router, own_redis, limits_config, clients
):
    # The Redis timeout is left at its default: a stopped Redis refuses the connection at once, and
    # the healthy first request must not race a short bound on a busy machine.
    router = start_router(env={"ROUTER_REDIS_URL": own_redis.url}, config=limits_config)
    http = clients.http(router)
    assert http.post(CHAT, json=chat(), headers=headers("org-closed")).status_code == 200
    own_redis.stop()

    started = time.monotonic()
    closed = http.post(CHAT, json=chat(), headers=headers("org-closed"))
    assert closed.status_code == 503
    assert error_code(closed) == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - started < 2.0  # bounded by the Redis timeout, never a hang
    open_statuses = [http.post(CHAT, json=chat(), headers=headers("org-open")).status_code for _ in range(4)]
    assert open_statuses == [200, 200, 200, 429]  # this router's own bucket of 3
    ready = http.get("/v1/status/readyz").json()
    limits_check = next(c for c in ready["checks"] if c["name"] == "limits")
    assert limits_check["status"] == "warn"

    own_redis.start()
    recovered = wait_until(
        lambda: http.post(CHAT, json=chat(), headers=headers("org-closed")).status_code == 200, timeout=5
    )
    assert recovered
    # Back on Redis: org-open's shared bucket was never touched during the outage.
    assert http.post(CHAT, json=chat(), headers=headers("org-open")).status_code == 200


def test_patch_limits_merges_null_removes_and_put_replaces_whole(pair, clients):
    """Issue 17.8: PATCH (JSON Merge Patch) keeps what it does not name; PUT replaces everything."""
    http = clients.http(pair[0])
    org = "org-patch"
    path = f"/v1/admin/orgs/{org}/limits"
    admin = auth(KEYS["admin"])
    start = {
        "rate_limits": {"requests_per_minute": 600, "burst": 100},
        "budgets": {"daily_tokens": 1000, "monthly_usd": 50.0},
        "failure_mode": "fail_closed",
    }
    assert http.put(path, json=start, headers=admin).status_code == 200

    merge = {**admin, "Content-Type": "application/merge-patch+json"}
    patched = http.patch(path, content=b'{"budgets": {"daily_tokens": 5000}}', headers=merge)
    assert patched.status_code == 200, patched.text
    assert patched.json()["limits"] == {**start, "budgets": {"daily_tokens": 5000, "monthly_usd": 50.0}}

    # Plain application/json is a merge patch too; null removes a member, nested or not.
    removed = http.patch(path, json={"budgets": {"monthly_usd": None}, "failure_mode": None}, headers=admin)
    assert removed.status_code == 200, removed.text
    assert removed.json()["limits"] == {
        "rate_limits": {"requests_per_minute": 600, "burst": 100},
        "budgets": {"daily_tokens": 5000},
        "failure_mode": "fail_open",  # back to its default
    }
    assert wait_until(
        lambda: (
            clients.http(pair[1]).get(path, headers=admin).json()["limits"].get("budgets")
            == {"daily_tokens": 5000}
        ),
        timeout=5,
    ), "the other router never applied the patch"

    # A patch whose result is invalid changes nothing.
    for bad in ({"rate_limits": {"burst": 0}}, {"budgets": {"daily_tokens": "many"}}, {"budgets": {"x": 1}}):
        refused = http.patch(path, json=bad, headers=admin)
        assert (refused.status_code, error_code(refused)) == (400, "VALIDATION_ERROR"), refused.text
    assert http.get(path, headers=admin).json()["limits"]["budgets"] == {"daily_tokens": 5000}
    updates = [line for line in pair[0].log_text().splitlines() if "policy_update" in line and org in line]
    assert any("patch" in line for line in updates), f"the patch was not logged as a policy update: {updates}"

    # PUT is a full replace: a body with only rate_limits drops the budgets.
    replaced = http.put(path, json={"rate_limits": {"requests_per_minute": 60}}, headers=admin)
    only_rates = {"rate_limits": {"requests_per_minute": 60}, "failure_mode": "fail_open"}
    assert replaced.json()["limits"] == only_rates

    # The CLI sends the same merge patch.
    cli = subprocess.run(
        [
            *router_command(),
            *("limits", "patch", org, "--set", "budgets.daily_tokens=7000", "--json"),
        ],
        env={**os.environ, "ROUTER_URL": pair[0].base_url, "ROUTER_ADMIN_KEY": KEYS["admin"].secret},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["limits"] == {**only_rates, "budgets": {"daily_tokens": 7000}}


def test_workers_without_a_shared_store_refuse_to_start_and_say_why(tmp_path: Path) -> None:
    """15.6: before, `--workers 3` without Redis started, and a 4/min limit let 7 of 12 through."""
    env = {"PATH": "/usr/bin:/bin", "ROUTER_DATA_DIR": str(tmp_path)}
    ran = subprocess.run(
        [*router_command(), "serve", "--port", "0", "--workers", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2, ran.stderr
    assert "ROUTER_REDIS_URL" in ran.stderr and "multiplied by 3" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_two_workers_sharing_redis_admit_exactly_the_org_limit(
    start_router: Callable[..., RouterProcess], redis_server: RedisServer, limits_config: Path
) -> None:
    router = start_router(
        env={"ROUTER_REDIS_URL": redis_server.url}, args=("--workers", "2"), config=limits_config
    )
    answers = asyncio.run(burst((router,), "org-workers", 12))
    assert sorted(a.status_code for a in answers) == [200] * 4 + [429] * 8, limit_events((router,))


class RouterTwoSecondsAhead(RouterProcess):
    """A router whose wall clock runs 2 s ahead of the others' (libfaketime; under `make test-date`,
    2 s ahead of the suite's shifted date)."""

    def environment(self) -> dict[str, str]:
        return shifted_env(2.0, super().environment())


def test_two_routers_whose_clocks_differ_by_2_s_admit_at_most_the_configured_rate(
    pair, redis_server: RedisServer, limits_config: Path, tmp_path: Path
) -> None:
    """One clock: buckets are refilled on Redis's clock. Before, the router 2 s ahead found the
    shared bucket 2 s fuller (5/s: +10 tokens) than the configured rate allows."""
    env = {
        "ROUTER_REDIS_URL": redis_server.url,
        "ROUTER_CONFIG_PATH": str(limits_config),
        "ROUTER_SECRET_KEY": SECRET_KEY,
    }
    with RouterTwoSecondsAhead(env=env, workdir=tmp_path / "ahead") as ahead:
        on_time = httpx.Client(base_url=pair[0].base_url, trust_env=False, timeout=30)
        skewed = httpx.Client(base_url=ahead.base_url, trust_env=False, timeout=30)
        began = time.monotonic()
        statuses = [
            client.post(CHAT, json=chat(), headers=headers("org-skew")).status_code
            for client in (on_time, skewed)
            for _ in range(20)
        ]
        elapsed = time.monotonic() - began
        on_time.close()
        skewed.close()
    allowed = 10 + elapsed * 5  # the burst, and 300/min for the time the requests took
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) <= allowed + 1, (statuses.count(200), allowed)
