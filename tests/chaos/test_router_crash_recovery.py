"""Chaos (issue 15.3): a router of a two-router fleet SIGKILLed mid-load and restarted, with clients
using the official ``openai`` SDK and its default retries (2, with its own backoff), an Idempotency-Key
on every request, and the default idempotency lease (120 s) and request timeout (120 s).

The clients reach the fleet through a Service-like proxy that skips a dead router. A retry of a request
that died with the router lands on the other router, which sees the key held by a dead process: it
answers 409 with a Retry-After no longer than the dead owner's key can outlive it, and proceeds once the
restarted router has declared its predecessor dead (or the owner key lapsed). Every request ends in
200 and is billed once: one usage record id per request id on the topic.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest

from tests.harness.backend import MockBackend
from tests.harness.chaos_pipeline import (
    MODEL,
    USAGE_TOPIC,
    ChaosStack,
    PipelineRouters,
    chat_body,
    new_org,
    pipeline_config,
    records_by_request,
)
from tests.harness.router_proc import RouterFleet
from tests.harness.service_proxy import ServiceProxy

BACKEND_LATENCY_MS = 300  # requests are in flight at the kill
CLIENTS = 10
# The defaults this is about; Redis and backend timeouts generous, so that a busy test machine does not
# turn into 503s what is measured here (they have tests of their own).
DEFAULTS = {
    "ROUTER_IDEMPOTENCY_LEASE_SECONDS": "120",
    "ROUTER_REQUEST_TIMEOUT_SECONDS": "120",
    "ROUTER_REDIS_TIMEOUT_SECONDS": "2",
}


@dataclass(frozen=True)
class Outcome:
    request_id: str
    started_s: float
    elapsed_s: float
    error: str | None  # None: 200; else the SDK's exception class and status
    attempts: int


@dataclass(frozen=True)
class CrashRun:
    outcomes: list[Outcome]
    killed_at: float
    restart_s: float
    records: dict[str, list[dict[str, Any]]]


class AttemptCounter:
    """Counts the SDK's attempts per Idempotency-Key (an httpx request hook)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> None:
        key = request.headers.get("Idempotency-Key", "")
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1


@pytest.fixture(scope="module")
def crash_run(chaos_stack: ChaosStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashRun]:
    org = new_org("chaos-crash")
    fleet = RouterFleet(tmp_path_factory.mktemp("chaos-crash-routers"))
    with contextlib.closing(fleet), MockBackend(models=(MODEL,)) as backend:
        backend.configure(latency_ms=BACKEND_LATENCY_MS)
        routers = PipelineRouters(chaos_stack, fleet)
        config = pipeline_config({"chaos-a": backend}, "chaos-a", [org])
        config["backends"][0] |= {"timeout_ms": 10_000, "connect_timeout_ms": 2_000}
        victim = routers.start(config, env=DEFAULTS)
        survivor = routers.start(config, env=DEFAULTS)
        attempts = AttemptCounter()
        with ServiceProxy([victim.process.port, survivor.process.port]) as service:
            client = openai.OpenAI(
                base_url=service.base_url + "/v1",
                api_key=org.secret,
                timeout=30.0,  # max_retries left at the SDK's default
                http_client=httpx2.Client(trust_env=False, event_hooks={"request": [attempts]}),
            )
            began = time.monotonic()
            stop = threading.Event()
            outcomes: list[Outcome] = []
            lock = threading.Lock()

            def one_client() -> None:
                while not stop.is_set():
                    request_id = f"crash-{uuid.uuid4().hex[:12]}"
                    started = time.monotonic() - began
                    error = None
                    try:
                        client.chat.completions.create(
                            **chat_body(),
                            extra_headers={"Idempotency-Key": request_id, "X-Request-ID": request_id},
                        )
                    except openai.APIStatusError as exc:
                        error = f"{exc.status_code} {exc.message}"
                    except openai.APIError as exc:
                        error = type(exc).__name__
                    outcome = Outcome(
                        request_id,
                        started,
                        time.monotonic() - began - started,
                        error,
                        attempts.counts.get(request_id, 0),
                    )
                    with lock:
                        outcomes.append(outcome)

            with ThreadPoolExecutor(CLIENTS) as pool:
                running = [pool.submit(one_client) for _ in range(CLIENTS)]
                time.sleep(2.0)  # load, not synchronisation: requests are in flight on both routers
                killed_at = time.monotonic() - began
                victim.process.kill()
                victim.process.start()
                restart_s = time.monotonic() - began - killed_at
                time.sleep(3.0)
                stop.set()
                for future in running:
                    future.result(timeout=120)
            client.close()
        acknowledged = {o.request_id for o in outcomes if o.error is None}
        records = records_by_request(chaos_stack.kafka.bootstrap, USAGE_TOPIC, acknowledged)
        yield CrashRun(outcomes, killed_at, restart_s, records)


def test_sigkilled_router_every_openai_client_request_ends_in_200_billed_once(crash_run: CrashRun) -> None:
    run = crash_run
    interrupted = [o for o in run.outcomes if o.attempts > 1 and o.started_s < run.killed_at]
    print(
        f"CHAOS crash-recovery: requests={len(run.outcomes)} interrupted={len(interrupted)} "
        f"restart={run.restart_s:.1f}s "
        f"max_elapsed_interrupted={max((o.elapsed_s for o in interrupted), default=0):.1f}s "
        f"errors={[o.error for o in run.outcomes if o.error][:5]}"
    )
    failed = [o for o in run.outcomes if o.error is not None]
    assert not failed, failed[:5]
    assert len(run.outcomes) >= 40
    assert interrupted, "no request was in flight on the killed router"
    missing = {o.request_id for o in run.outcomes} - run.records.keys()
    assert not missing, f"{len(missing)} answered requests have no usage record"
    doubles = {rid: found for rid, found in run.records.items() if len({r["record_id"] for r in found}) > 1}
    assert not doubles, f"billed twice: {doubles}"
