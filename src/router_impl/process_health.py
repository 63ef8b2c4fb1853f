"""The router process's own health (not a backend's): liveness and readiness from named component
checks, aggregated, cached so probes stay cheap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

CheckStatus = Literal["pass", "warn", "fail"]
OverallStatus = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    details: str
    observed_at: datetime


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    build_time: str


@dataclass(frozen=True)
class Report:
    status: OverallStatus
    checks: tuple[CheckResult, ...]
    build: BuildInfo
    ready_backends: tuple[str, ...] = ()
    degraded_backends: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "unhealthy"


@dataclass(frozen=True)
class HealthCheck:
    """A named probe. It returns (status, details); details never hold hosts, URLs or secrets."""

    name: str
    probe: Callable[[], Awaitable[tuple[CheckStatus, str]]]


@dataclass
class _Cached:
    report: Report | None = None
    expires: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _overall(results: Sequence[CheckResult]) -> OverallStatus:
    statuses = {r.status for r in results}
    if "fail" in statuses:
        return "unhealthy"
    return "degraded" if "warn" in statuses else "healthy"


class HealthService:
    def __init__(
        self,
        *,
        build: BuildInfo,
        liveness: Sequence[HealthCheck],
        readiness: Sequence[HealthCheck],
        backends: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
        cache_seconds: float = 1.0,
        probe_timeout: float = 0.5,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.build = build
        self._backends = backends  # (ready, degraded) backend ids, for the readiness report
        self._checks = {"liveness": tuple(liveness), "readiness": tuple(readiness)}
        self._cache = {"liveness": _Cached(), "readiness": _Cached()}
        self.cache_seconds = cache_seconds
        self.probe_timeout = probe_timeout
        self.now = now
        self.monotonic = monotonic

    async def liveness(self) -> Report:
        return await self._report("liveness")

    async def readiness(self) -> Report:
        return await self._report("readiness")

    async def _report(self, kind: str) -> Report:
        cached = self._cache[kind]
        if cached.report is not None and self.monotonic() < cached.expires:
            return cached.report
        async with cached.lock:  # a burst of probes shares one evaluation
            if cached.report is None or self.monotonic() >= cached.expires:
                results = await asyncio.gather(*(self._run(c) for c in self._checks[kind]))
                ready, degraded = self._backends() if self._backends and kind == "readiness" else ((), ())
                cached.report = Report(
                    status=_overall(results),
                    checks=tuple(results),
                    build=self.build,
                    ready_backends=ready,
                    degraded_backends=degraded,
                )
                cached.expires = self.monotonic() + self.cache_seconds
            return cached.report

    async def _run(self, check: HealthCheck) -> CheckResult:
        try:
            status, details = await asyncio.wait_for(check.probe(), self.probe_timeout)
        except TimeoutError:
            status, details = "fail", f"no answer within {self.probe_timeout:g}s"
        except Exception as exc:
            status, details = "fail", f"probe error: {type(exc).__name__}"
        return CheckResult(name=check.name, status=status, details=details[:500], observed_at=self.now())
