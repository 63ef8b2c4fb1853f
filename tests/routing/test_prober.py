"""The active prober against real servers: MockBackend's healthy switch flips the registry, and a
backend that never answers times out without probes piling up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from router_impl.config.model import BackendConfig, RuntimeConfig
from router_impl.routing.health import Availability, BackendHealth
from router_impl.routing.prober import Prober, check, default_session, probe_url
from tests.harness.backend import MockBackend
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.wait import eventually


def backend_config(base_url: str, backend_id: str = "mock-a", **health_check: Any) -> BackendConfig:
    return BackendConfig(
        id=backend_id,
        base_url=base_url,
        models=("mock-model",),
        health_check={"interval_seconds": 1, "timeout_ms": 500, **health_check},
    )


def config_of(*backends: BackendConfig) -> RuntimeConfig:
    return RuntimeConfig(backends=backends)


class SteppedClock:
    """The prober's clock, moved only by the test; counts the reads (one per turn of its loop)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    async def turns(self, count: int = 3) -> None:
        """Let the prober's loop go round ``count`` more times at this instant."""
        seen = self.reads
        await eventually(lambda: self.reads >= seen + count, what=f"{count} turns of the prober's loop")


@pytest.fixture
def mock() -> Iterator[MockBackend]:
    with MockBackend() as backend:
        yield backend


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = default_session()
    yield client
    await client.close()


class SilentServer:
    """Accepts connections and never answers: a hung backend. Counts concurrent connections."""

    def __init__(self) -> None:
        self.open = 0
        self.max_open = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://{LOOPBACK}:{port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while await reader.read(4096):
                pass  # never answer; wait for the client to give up
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def run_prober(prober: Prober, snapshot: Callable[[], RuntimeConfig]) -> asyncio.Task[None]:
    task = asyncio.create_task(prober.run(snapshot))
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_probe_path_is_relative_to_the_backend_host() -> None:
    backend = backend_config("https://vllm-a.internal:8443/openai/v1", path="/healthz")
    assert str(probe_url(backend)) == "https://vllm-a.internal:8443/healthz"


async def test_healthy_switch_flips_the_registry(mock: MockBackend, session: aiohttp.ClientSession) -> None:
    health = BackendHealth()
    prober = Prober(health)
    backend = backend_config(mock.openai_base_url)

    assert await prober.probe(session, backend) is True
    assert health.stats("mock-a").probe_ok is True
    mock.configure(healthy=False)
    assert await prober.probe(session, backend) is False
    assert health.availability("mock-a", 30) == Availability(False, 0.0, "probe_failed")
    mock.configure(healthy=True)
    assert await prober.probe(session, backend) is True
    assert health.availability("mock-a", 30).reason == "warming_up"
    assert mock.requests.count("/health") == 3


async def test_unreachable_backend_fails_its_probe(session: aiohttp.ClientSession) -> None:
    backend = backend_config(f"http://{LOOPBACK}:{free_port()}/v1")
    assert await check(session, backend) is False


async def test_running_prober_follows_the_switch_and_stops_cleanly(mock: MockBackend) -> None:
    health = BackendHealth()
    sessions: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        sessions.append(default_session())
        return sessions[-1]

    prober = Prober(health, factory, max_tick_s=0.1)
    config = config_of(backend_config(mock.openai_base_url))
    task = await run_prober(prober, lambda: config)
    try:
        await eventually(lambda: health.stats("mock-a").probe_ok is True)
        mock.configure(healthy=False)
        await eventually(lambda: not health.availability("mock-a", 30).usable, timeout=3)
        mock.configure(healthy=True)
        await eventually(lambda: health.availability("mock-a", 30).usable, timeout=3)
    finally:
        await stop(task)
    assert prober.in_flight == 0
    assert sessions and sessions[0].closed
    # Cancelled means stopped: the loop is over and no probe of it is left running.
    assert task.done()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe:")] == []


async def test_each_backend_is_probed_on_its_own_interval(mock: MockBackend) -> None:
    other = MockBackend().start()
    try:
        clock = SteppedClock()
        prober = Prober(BackendHealth(), clock=clock, max_tick_s=0.01)
        config = config_of(
            backend_config(mock.openai_base_url, "every-second", interval_seconds=1),
            backend_config(other.openai_base_url, "rarely", interval_seconds=60),
        )
        task = await run_prober(prober, lambda: config)
        try:
            for second in (0, 1, 2):  # due at 0, 1 and 2 seconds, and not in between
                clock.now = second
                await eventually(lambda n=second + 1: mock.requests.count("/health") == n)
                clock.now = second + 0.5
                await eventually(lambda: prober.in_flight == 0)
                await clock.turns()
                assert mock.requests.count("/health") == second + 1
            assert other.requests.count("/health") == 1  # its 60 s have not passed
        finally:
            await stop(task)
    finally:
        other.stop()


async def test_a_backend_added_to_the_config_is_probed_and_a_removed_one_no_longer(mock: MockBackend) -> None:
    clock = SteppedClock()
    prober = Prober(BackendHealth(), clock=clock, max_tick_s=0.01)
    current = {"config": config_of()}
    task = await run_prober(prober, lambda: current["config"])
    try:
        await clock.turns()
        assert mock.requests.count("/health") == 0
        current["config"] = config_of(backend_config(mock.openai_base_url))
        await eventually(lambda: mock.requests.count("/health") == 1, timeout=2)
        await eventually(lambda: prober.in_flight == 0)
        current["config"] = config_of()
        clock.now += 5  # five intervals: it would have been probed again, had it stayed
        await clock.turns()
        assert mock.requests.count("/health") == 1
    finally:
        await stop(task)


async def test_hanging_backend_times_out_without_piling_up_probes() -> None:
    silent = SilentServer()
    base_url = await silent.start()
    try:
        health = BackendHealth()
        # The timeout outlasts the interval: without the one-in-flight rule probes would stack up.
        prober = Prober(health, max_tick_s=0.05)
        config = config_of(backend_config(base_url, "hung", interval_seconds=1, timeout_ms=1_500))
        task = await run_prober(prober, lambda: config)
        most_in_flight = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 2.5:
                most_in_flight = max(most_in_flight, prober.in_flight)
                await asyncio.sleep(0.02)
        finally:
            await stop(task)
        assert health.availability("hung", 30) == Availability(False, 0.0, "probe_failed")
        assert most_in_flight == 1
        assert silent.max_open == 1
        assert silent.accepted == 2  # at 0 s (timed out at 1.5 s), then at 1.5 s (cancelled at 2.5 s)
        await eventually(lambda: silent.open == 0, timeout=2)  # cancelling closed the connection
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe:")] == []
    finally:
        await silent.stop()


async def test_a_backend_without_the_health_path_stays_in_service(mock, session):
    """Ollama and some proxies have no /health: a 404 means the server is up."""
    assert await check(session, backend_config(mock.base_url, path="/no-such-health-path"))
    mock.configure(healthy=False)  # /health answers 503: the server says it is not ready
    assert not await check(session, backend_config(mock.base_url))
