"""Metrics: route templates keep labels few; state gauges follow the components; /metrics of a live
router counts what happened, also summed across workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_impl.telemetry.metrics import BackendSample, Metrics, RouteNames, Sample
from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterProcess

DEMO_KEY = {"Authorization": "Bearer rk-demo-key"}


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return values(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_paths_map_to_their_route_templates() -> None:
    names = RouteNames(
        ["/v1/chat/completions", "/v1/audit/requests/{requestId}", "/v1/admin/backends/{backendId}/state"]
    )
    assert names("/v1/chat/completions") == "/v1/chat/completions"
    assert names("/v1/audit/requests/abc-123") == "/v1/audit/requests/{requestId}"
    assert names("/v1/admin/backends/b1/state") == "/v1/admin/backends/{backendId}/state"
    assert names("/v1/admin/backends/b1/state/extra") == "unmatched"
    assert names("/wp-login.php") == "unmatched"


def test_state_gauges_follow_the_sample_and_forget_removed_backends() -> None:
    metrics = Metrics()
    samples = [
        Sample(
            backends=(BackendSample("a", True, "closed"), BackendSample("b", False, "open")),
            config_rejected=2,
        ),
        Sample(backends=(BackendSample("a", False, "half_open"),), outbox_records=7, config_rejected=3),
    ]
    metrics.sample_from(lambda: samples[0])
    text = metrics.render().decode()
    assert value(text, "router_backend_up", backend="b") == 0
    assert value(text, "router_breaker_state", backend="b") == 2
    assert value(text, "router_config_rejected_total") == 2
    samples.pop(0)
    text = metrics.render().decode()
    assert ("router_backend_up", (("backend", "b"),)) not in values(text)
    assert value(text, "router_breaker_state", backend="a") == 1
    assert value(text, "router_usage_outbox_records") == 7
    assert value(text, "router_config_rejected_total") == 3  # counted once, not re-added


def _chat(router: RouterProcess, count: int, headers: dict[str, str] | None = None) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=router.base_url, trust_env=False, timeout=10) as client:
            body: dict[str, Any] = chat_body("demo", "hi")
            answers = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=body, headers=headers or DEMO_KEY)
                    for _ in range(count)
                )
            )
            return [a.status_code for a in answers]

    return asyncio.run(run())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_live_router_counts_requests_backend_calls_decisions_and_auth_failures(
    router_factory: Callable[..., RouterProcess], workers: int, request: pytest.FixtureRequest
) -> None:
    # Several workers need a shared limit store (they refuse to start without one).
    env = {"ROUTER_REDIS_URL": request.getfixturevalue("redis_server").url} if workers > 1 else {}
    router = router_factory(env=env, args=("--demo", "--workers", str(workers)))
    assert _chat(router, 40) == [200] * 40
    assert _chat(router, 3, {"Authorization": "Bearer wrong"}) == [401] * 3
    scrapes = [httpx.get(f"{router.base_url}/metrics", trust_env=False) for _ in range(4)]
    for scrape in scrapes:  # whichever worker answers, the totals are the same
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        text = scrape.text
        assert (
            value(text, "router_requests_total", route="/v1/chat/completions", method="POST", status="200")
            == 40
        )
        assert (
            value(text, "router_requests_total", route="/v1/chat/completions", method="POST", status="401")
            == 3
        )
        assert value(text, "router_backend_requests_total", backend="demo-upstream", outcome="ok") == 40
        assert value(text, "router_routing_decisions_total", model="demo", decision="PRIMARY") == 40
        assert value(text, "router_auth_failures_total", reason="INVALID_API_KEY") == 3
        assert value(text, "router_request_duration_seconds_count", route="/v1/chat/completions") == 43
        assert value(text, "router_backend_up", backend="demo-upstream") == 1
        assert "router_build_info" in text and "_created" not in text


def test_health_and_metrics_endpoints_refuse_a_flood_from_one_client(
    router_factory: Callable[..., RouterProcess],
) -> None:
    router = router_factory(args=("--demo",))

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=router.base_url, trust_env=False, timeout=10) as client:
            return await asyncio.gather(
                *(client.get(path) for path in ["/v1/status/readyz", "/metrics"] * 60)
            )

    answers = asyncio.run(flood())
    refused = [a for a in answers if a.status_code == 429]
    assert refused, "120 probes at once from one address were all served"
    assert all(a.status_code in (200, 429) for a in answers)
    assert refused[0].json()["code"] == "RATE_LIMIT_EXCEEDED"
    assert int(refused[0].headers["Retry-After"]) >= 1
