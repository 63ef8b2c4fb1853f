"""Active health checks: GET each backend's ``health_check.path`` (relative to its host) every
``interval_seconds`` and tell the health registry whether it answered 2xx within ``timeout_ms``.

At most one probe per backend is in flight: a backend that hangs costs one task until its
timeout, never one more per interval.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp
from yarl import URL

from router_impl.config.model import BackendConfig, RuntimeConfig

SessionFactory = Callable[[], aiohttp.ClientSession]
_MAX_BODY_BYTES = 64 * 1024
_MIN_SLEEP_S = 0.01


class ProbeSink(Protocol):
    def probe_result(self, backend_id: str, ok: bool) -> None: ...


def default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
        headers={"User-Agent": "api-router-health-probe"},
    )


def probe_url(backend: BackendConfig) -> URL:
    """The contract says the path is relative to the backend's host, not to its base URL."""
    return URL(str(URL(backend.base_url).origin()) + backend.health_check.path, encoded=True)


class Prober:
    """``run`` probes until cancelled; ``max_tick_s`` bounds how late a new backend is noticed."""

    def __init__(
        self,
        health: ProbeSink,
        session_factory: SessionFactory = default_session,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_tick_s: float = 1.0,
    ) -> None:
        self._health = health
        self._session_factory = session_factory
        self._clock = clock
        self._max_tick_s = max_tick_s
        self._due: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[bool]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, snapshot: Callable[[], RuntimeConfig]) -> None:
        session = self._session_factory()
        try:
            while True:
                now = self._clock()
                self._start_due(session, snapshot().backends, now)
                await asyncio.sleep(self._sleep_s(now))
        finally:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._running.clear()
            self._due.clear()
            await session.close()

    async def probe(self, session: aiohttp.ClientSession, backend: BackendConfig) -> bool:
        """One health check of ``backend``, reported to the registry."""
        ok = await check(session, backend)
        self._health.probe_result(backend.id, ok)
        return ok

    def _start_due(
        self, session: aiohttp.ClientSession, backends: Iterable[BackendConfig], now: float
    ) -> None:
        configured: set[str] = set()
        for backend in backends:
            configured.add(backend.id)
            if self._due.get(backend.id, now) > now or backend.id in self._running:
                continue
            self._due[backend.id] = now + backend.health_check.interval_seconds
            task = asyncio.create_task(self.probe(session, backend), name=f"health-probe:{backend.id}")
            self._running[backend.id] = task
            task.add_done_callback(functools.partial(self._finished, backend.id))
        for backend_id in [b for b in self._due if b not in configured]:
            del self._due[backend_id]

    def _finished(self, backend_id: str, task: asyncio.Task[bool]) -> None:
        if self._running.get(backend_id) is task:
            del self._running[backend_id]

    def _sleep_s(self, now: float) -> float:
        waiting = [due for backend_id, due in self._due.items() if backend_id not in self._running]
        until_next = min(waiting, default=now + self._max_tick_s) - now
        return min(self._max_tick_s, max(_MIN_SLEEP_S, until_next))


async def check(session: aiohttp.ClientSession, backend: BackendConfig) -> bool:
    """True when the backend answers the health path within the timeout with anything but a 5xx.

    A server that answers 404 is up: many OpenAI-compatible servers (Ollama, some proxies) have
    no /health, and must not be taken out of service for it. Connection failures, timeouts and
    5xx answers (a server saying it is not ready) are failures.
    """
    timeout_s = backend.health_check.timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(
                probe_url(backend), allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                await response.content.read(_MAX_BODY_BYTES)  # drained, the connection is reused
                return response.status < 500
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return False
