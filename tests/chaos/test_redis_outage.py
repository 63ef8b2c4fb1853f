"""Chaos: Redis (limits, budgets, idempotency, audit) unavailable for 10 s under load.

Five seconds hung (SIGSTOP: connections accepted, nothing answered, so every call runs into its
timeout), then five seconds down (SIGKILL: connections refused), then back, empty. A fail_closed
organisation is refused with 503 at once; a fail_open one is served within this router's own
buckets; both are back on Redis within seconds, with no router restart.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import httpx

from tests.contract.openapi_check import assert_conforms
from tests.harness.backend import MockBackend
from tests.harness.chaos_load import CHAT, BoundedLoad, Shot, summary, tally
from tests.harness.chaos_pipeline import (
    MODEL,
    ChaosStack,
    PipelineRouterFactory,
    chat_body,
    new_org,
    pipeline_config,
)

HUNG_S = 5.0
DOWN_S = 5.0
OPEN_RPM, OPEN_BURST = 1200, 20  # 20 requests/s: below what the load offers the fail_open org
MAX_LATENCY_S = 3.0
REFUSAL_LATENCY_S = 1.5  # fail_closed answers within the Redis timeout (and one retry)
RECOVERY_S = 3.0


def test_redis_hung_then_down_for_10s_fail_closed_refuses_fail_open_serves_and_both_recover(
    chaos_stack: ChaosStack, pipeline_router: PipelineRouterFactory, backend: MockBackend
) -> None:
    redis = chaos_stack.redis
    fail_open = new_org(
        "chaos-open",
        rate_limits={"requests_per_minute": OPEN_RPM, "burst": OPEN_BURST},
        failure_mode="fail_open",
    )
    fail_closed = new_org(
        "chaos-closed", rate_limits={"requests_per_minute": 60_000}, failure_mode="fail_closed"
    )
    router = pipeline_router(pipeline_config({"chaos-a": backend}, "chaos-a", [fail_open, fail_closed]))
    pid = router.process.pid

    def shot(n: int) -> Shot:
        org = fail_closed if n % 3 == 2 else fail_open  # 40 requests/s for fail_open, 20 for fail_closed
        request_id = f"redis-{n}-{uuid.uuid4().hex[:6]}"
        return Shot(org.id, request_id, chat_body(), org.headers(request_id))

    with BoundedLoad(router.base_url, shot, concurrency=12, rate=60) as load:
        time.sleep(3.0)
        assert router.metric("router_limits_store_up") == 1
        hung_at = load.now()
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            time.sleep(HUNG_S)
            # The contract's error shapes, on both routes, while Redis does not answer.
            refused = [
                httpx.post(
                    router.base_url + path,
                    json=body,
                    headers=fail_closed.headers(f"redis-probe-{uuid.uuid4().hex[:8]}"),
                    trust_env=False,
                    timeout=5.0,
                )
                for path, body in (
                    (CHAT, chat_body()),
                    ("/v1/inference", {"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "x"}),
                )
            ]
            down_at = load.now()
            redis.kill()  # SIGKILL ends a stopped process too
            time.sleep(DOWN_S)
            degraded = (router.metric("router_limits_store_up"), router.readiness("limits"))
        finally:
            if redis.pid is not None:
                os.kill(redis.pid, signal.SIGCONT)
            back_at = load.now()
            redis.start()
        time.sleep(RECOVERY_S + 3.0)
        recovered = (router.metric("router_limits_store_up"), router.readiness("limits"))
    outcomes = load.outcomes
    closed_out = load.between(hung_at, back_at, fail_closed.id)
    open_out = load.between(hung_at, back_at, fail_open.id)
    closed_after = load.between(back_at, load.now(), fail_closed.id)
    open_after = load.between(back_at, load.now(), fail_open.id)
    first_closed_200 = min((o.started_s for o in closed_after if o.status == 200), default=float("inf"))
    print(
        summary(
            "redis-10s",
            outcomes,
            closed_outage=dict(tally(closed_out)),
            open_outage=dict(tally(open_out)),
            closed_recovered_after=f"{first_closed_200 - back_at:.2f}s",
            refusal_max_latency=f"{max((o.latency_s for o in closed_out), default=0):.2f}s",
            hung_s=f"{down_at - hung_at:.1f}",
        )
    )

    counts = tally(outcomes)
    assert counts["errors"] == counts["other"] == 0, [o for o in outcomes if o.status not in (200, 429, 503)]
    assert max(o.latency_s for o in outcomes) < MAX_LATENCY_S
    # fail_closed: 503 with its machine-readable code, quickly, for the whole outage.
    assert len(closed_out) >= 50
    assert {(o.status, o.code) for o in closed_out} == {(503, "SERVICE_UNAVAILABLE")}
    assert max(o.latency_s for o in closed_out) < REFUSAL_LATENCY_S
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert_conforms(answer)
    assert refused[0].json()["error"]["code"] == "SERVICE_UNAVAILABLE"  # OpenAI route, OpenAI shape
    assert refused[0].headers["Retry-After"] == "1"
    # /v1/inference: request_id is an idempotency key, and the idempotency store fails closed.
    assert refused[1].json()["code"] == "SERVICE_UNAVAILABLE"  # contract ErrorResponse
    # fail_open: served throughout, within this router's own bucket (burst + refill over the outage).
    open_counts = tally(open_out)
    outage_s = back_at - hung_at
    assert open_counts["refused_503"] == 0
    assert open_counts["served"] >= 0.5 * OPEN_RPM / 60 * outage_s
    assert open_counts["served"] <= OPEN_BURST + OPEN_RPM / 60 * (outage_s + 1.0)
    assert degraded == (0, "warn")
    # Back on Redis within seconds, same process.
    assert first_closed_200 - back_at < RECOVERY_S
    assert {o.status for o in closed_after if o.started_s >= back_at + RECOVERY_S} == {200}
    assert tally(open_after)["refused_503"] == 0
    assert recovered == (1, "pass")
    assert router.process.pid == pid
