"""Backend chaos rig: faulty mock backends (tests/harness/chaos_backend.py, with the load generator), a
real router in front of them, and when the router's resource figures (tests/harness/router_resources.py)
are back to where they were.

``ChaosBackend`` injects its faults into a fraction of the requests it gets, one fault drawn per
request from those configured, so one backend can carry several faults at once. The router
serves two models:

- ``chaos-pair`` on ``chaos-flaky`` (faulty, weight 100) with ``chaos-standby`` (healthy,
  weight 0: failover only), for the faults the router may fail over from;
- ``chaos-solo`` on ``chaos-solo`` alone (faulty), where every fault must surface as an error.

Both policies set ``failover_threshold`` to its maximum: with half the requests faulty the
breakers stay closed, so the faults reach the router for the whole run (the breaker has its
own tests in tests/e2e/test_failover.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.harness.backend import MockBackend
from tests.harness.chaos_backend import (
    API_KEY,
    BACKEND_TIMEOUT_MS,
    BACKENDS,
    CHAT,
    CONCURRENCY,
    FAULTS,
    HEALTHY_LATENCY_MS,
    INFERENCE,
    MIXED_SHOTS,
    PAIR_MODEL,
    SOLO_MODEL,
    ChaosBackend,
    LoadResult,
    Outcome,
    Shot,
    run_load,
)
from tests.harness.config_docs import backend_doc, failover_model, key_record, model_doc, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.router_resources import Resources, resources
from tests.harness.wait import last_reading

__all__ = [  # what tests/chaos/test_backend_faults.py takes from here
    "BACKEND_TIMEOUT_MS",
    "CHAT",
    "FAULTS",
    "HEALTHY_LATENCY_MS",
    "INFERENCE",
    "MIXED_SHOTS",
    "PAIR_MODEL",
    "SOLO_MODEL",
    "LoadResult",
    "Outcome",
    "Resources",
    "Rig",
    "Shot",
    "back_to",
    "rig",
    "run_load",
    "settle",
]


@dataclass
class Rig:
    router: RouterProcess
    flaky: ChaosBackend
    standby: MockBackend
    solo: ChaosBackend
    startup: Resources = field(init=False)  # right after start, before any inference request

    @property
    def faulty(self) -> tuple[ChaosBackend, ChaosBackend]:
        return self.flaky, self.solo

    def break_with(self, faults: Sequence[str], rate: float) -> None:
        for backend in self.faulty:
            backend.break_with(faults, rate)

    def heal(self) -> None:
        self.break_with((), 0.0)

    def resources(self) -> Resources:
        ports = frozenset(backend.port for backend in (self.flaky, self.standby, self.solo))
        return resources(self.router, ports)


def _backend(backend_id: str, backend: MockBackend, model: str, timeout_ms: int) -> dict[str, Any]:
    # Loopback connects are instant: a short connect timeout would only time the router's own
    # stalls (the pool caps it below timeout_ms anyway).
    health = {"path": "/health", "interval_seconds": 60, "timeout_ms": 300}
    return backend_doc(
        backend_id,
        backend.openai_base_url,
        model,
        timeout_ms=timeout_ms,
        connect_timeout_ms=1_000,
        health_check=health,
    )


def rig_config(flaky: MockBackend, standby: MockBackend, solo: MockBackend) -> dict[str, Any]:
    return {
        "backends": [
            _backend("chaos-flaky", flaky, PAIR_MODEL, BACKEND_TIMEOUT_MS),
            _backend("chaos-standby", standby, PAIR_MODEL, 5_000),
            _backend("chaos-solo", solo, SOLO_MODEL, BACKEND_TIMEOUT_MS),
        ],
        "models": [
            failover_model(
                PAIR_MODEL, "chaos-flaky", "chaos-standby", failover_threshold=100, warmup_seconds=0
            ),
            model_doc(SOLO_MODEL, "chaos-solo", failover_threshold=100, warmup_seconds=0),
        ],
        "api_keys": [key_record("key-chaos", "org-chaos", API_KEY)],
    }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The router and its backends, warmed up with a short mixed faulty load and settled again."""
    workdir = tmp_path_factory.mktemp("chaos-backends")
    with (
        ChaosBackend(models=(PAIR_MODEL,), seed=1) as flaky,
        MockBackend(models=(PAIR_MODEL,)) as standby,
        ChaosBackend(models=(SOLO_MODEL,), seed=2) as solo,
    ):
        for backend in (flaky, standby, solo):
            backend.configure(latency_ms=HEALTHY_LATENCY_MS)
        path = write_config(workdir, rig_config(flaky, standby, solo))
        fleet = RouterFleet(workdir)
        try:
            router = fleet.start(
                env={
                    "ROUTER_CONFIG_PATH": str(path),
                    "ROUTER_ACCESS_LOG": "false",
                    "ROUTER_BREAKER_COOL_DOWN_SECONDS": "0.5",
                }
            )
            made = Rig(router, flaky, standby, solo)
            made.startup = made.resources()
            made.break_with(FAULTS, 0.5)
            asyncio.run(run_load(router.base_url, MIXED_SHOTS, seconds=2.0))
            made.heal()
            settle(made, made.startup, pools_drained=False)
            yield made
        finally:
            fleet.close()


TASK_SLACK = 3  # a health probe or a background round may be running at the scrape
FD_SLACK = 4  # ... and hold a connection


def back_to(now: Resources, before: Resources, *, pools_drained: bool) -> bool:
    """Whether ``now`` is ``before`` again, give or take a probe. Until the pools have drained
    (``pools_drained`` False), idle keep-alive connections to the backends may remain, as many as
    the calls that were in flight at once: at most one per client, per backend. Once drained, at
    most a health probe's connection per backend is left."""
    if now.tasks > before.tasks + TASK_SLACK or now.own_fds > before.own_fds + FD_SLACK:
        return False
    return now.backend_sockets <= (BACKENDS if pools_drained else CONCURRENCY * BACKENDS)


def settle(rig: Rig, before: Resources, *, pools_drained: bool, within_s: float = 10.0) -> Resources:
    """The router's figures once back to ``before`` (the last reading on timeout). Pooled
    connections close after 4 s idle, checked every 4 s: draining the pools takes up to 8 s."""
    return last_reading(
        rig.resources, lambda now: back_to(now, before, pools_drained=pools_drained), within_s, interval=0.1
    )
