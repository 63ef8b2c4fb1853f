import asyncio
from datetime import UTC, datetime

from router_impl.process_health import BuildInfo, HealthCheck, HealthService

BUILD = BuildInfo("1.0", "abc", "now")


def probe(status, details="d", calls=None, delay=0.0):
    async def run():
        if calls is not None:
            calls.append(1)
        await asyncio.sleep(delay)
        return status, details

    return run


def service(checks, *, clock=None, **kw):
    ticks = clock or [0.0]
    return HealthService(
        build=BUILD,
        liveness=checks,
        readiness=checks,
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        monotonic=lambda: ticks[0],
        **kw,
    )


async def test_all_pass_is_healthy_warn_is_degraded_fail_is_unhealthy():
    assert (await service([HealthCheck("a", probe("pass"))]).readiness()).status == "healthy"
    degraded = await service([HealthCheck("a", probe("pass")), HealthCheck("b", probe("warn"))]).readiness()
    assert (degraded.status, degraded.ok) == ("degraded", True)
    failed = await service([HealthCheck("a", probe("warn")), HealthCheck("b", probe("fail"))]).readiness()
    assert (failed.status, failed.ok) == ("unhealthy", False)


async def test_results_are_cached_for_the_cache_window():
    calls: list[int] = []
    clock = [0.0]
    svc = service([HealthCheck("a", probe("pass", calls=calls))], clock=clock, cache_seconds=1.0)
    await asyncio.gather(*(svc.readiness() for _ in range(50)))
    assert len(calls) == 1
    clock[0] = 1.5
    await svc.readiness()
    assert len(calls) == 2


async def test_slow_or_crashing_probe_fails_without_stalling_the_endpoint():
    async def boom():
        raise RuntimeError("secret-host:6379 refused")

    svc = service(
        [HealthCheck("slow", probe("pass", delay=5)), HealthCheck("boom", boom)], probe_timeout=0.05
    )
    report = await asyncio.wait_for(svc.readiness(), 1)
    by_name = {c.name: c for c in report.checks}
    assert by_name["slow"].status == "fail" and "no answer" in by_name["slow"].details
    assert by_name["boom"].status == "fail"
    assert "secret-host" not in by_name["boom"].details  # exception text may carry hosts: never shown
