"""Backend chaos rig: faulty mock backends, a real router in front of them, a bounded load
generator and the router's resource figures (RSS, open fds, event-loop tasks).

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
import collections
import contextlib
import itertools
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from router_impl.auth.keys import hash_secret
from tests.harness import backend_responses as responses
from tests.harness.backend import GARBAGE_BODY, BackendControls, MockBackend, _drop_connection
from tests.harness.errors import error_code
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.telemetry.test_metrics import value as metric

PAIR_MODEL = "chaos-pair"
SOLO_MODEL = "chaos-solo"
API_KEY = "rk_chaos_backend_faults"
BACKEND_TIMEOUT_MS = 400  # hang -> 504 (or failover) in 0.4 s
HEALTHY_LATENCY_MS = 10
CONCURRENCY = 16  # clients of the load generator, one connection each
BACKENDS = 3
DIE_AFTER_CHUNKS = 2
FAULTS = ("hang", "reset", "garbage", "die")  # "die" only hits streamed answers
FAULT_OF_REQUEST = web.RequestKey("chaos_fault", str)  # "" when the request is served normally

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"


# ---------------------------------------------------------------- faulty backend


class ChaosBackend(MockBackend):
    """A mock backend that breaks ``rate`` of its inference requests with one of ``faults``.

    ``hang`` accepts the request and never answers (until the caller hangs up), ``reset`` drops
    the connection with a RST once the request is read, ``garbage`` answers 200 with a body that
    is not JSON, ``die`` sends ``DIE_AFTER_CHUNKS`` events of a streamed answer and then cuts the connection.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults: tuple[str, ...] = ()
        self.rate = 0.0
        self._chaos_rng = random.Random(seed)
        self._calls: collections.Counter[str] = collections.Counter()  # by X-Request-ID
        self._fault_of: dict[str, str] = {}  # X-Request-ID -> the fault it got
        self._hanging = 0
        self._lock = threading.Lock()

    def break_with(self, faults: Sequence[str], rate: float) -> None:
        unknown = set(faults) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}"
        self.faults, self.rate = tuple(faults), rate
        with self._lock:
            self._calls.clear()
            self._fault_of.clear()

    @property
    def injected(self) -> dict[str, str]:
        """The fault each request got, by X-Request-ID, since ``break_with``."""
        with self._lock:
            return dict(self._fault_of)

    @property
    def calls(self) -> dict[str, int]:
        """Inference calls by X-Request-ID since ``break_with``."""
        with self._lock:
            return dict(self._calls)

    @property
    def hanging(self) -> int:
        """Hung requests whose caller is still connected."""
        with self._lock:
            return self._hanging

    def _draw(self, request_id: str, streamed: bool) -> str | None:
        with self._lock:
            self._calls[request_id] += 1
        if not self.faults or self._chaos_rng.random() >= self.rate:
            return None
        fault = self._chaos_rng.choice(self.faults)
        if fault == "die" and not streamed:
            return None
        with self._lock:
            self._fault_of[request_id] = fault
        return fault

    async def _fault(self, request: web.Request, controls: BackendControls) -> web.StreamResponse | None:
        try:
            body = await request.json()  # read (and cached) by the parent already
        except ValueError:
            body = None
        streamed = isinstance(body, dict) and body.get("stream") is True
        fault = self._draw(request.headers.get("X-Request-ID", ""), streamed)
        request[FAULT_OF_REQUEST] = fault or ""
        if fault == "hang":
            await self._hang_until_the_caller_leaves(request)
            _drop_connection(request)
            return web.Response(status=500)  # never reaches anyone
        if fault == "reset":
            _drop_connection(request)
            return web.Response(status=500)
        if fault == "garbage":
            return web.Response(status=200, body=GARBAGE_BODY, content_type="application/json")
        return await super()._fault(request, controls)

    async def _hang_until_the_caller_leaves(self, request: web.Request) -> None:
        # aiohttp does not cancel a handler whose client went away: poll, so hung handlers do not
        # pile up in the test process for the whole run.
        with self._lock:
            self._hanging += 1
        try:
            while self._stopping is not None and not self._stopping.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                await asyncio.sleep(0.05)
        finally:
            with self._lock:
                self._hanging -= 1

    async def _stream(
        self, request: web.Request, chunks: list[responses.JsonObject], controls: BackendControls
    ) -> web.StreamResponse:
        if request.get(FAULT_OF_REQUEST) == "die":
            controls = replace(controls, stream_then_die=DIE_AFTER_CHUNKS)
        return await super()._stream(request, chunks, controls)


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
    return {
        "id": backend_id,
        "base_url": backend.openai_base_url,
        "models": [model],
        "timeout_ms": timeout_ms,
        # Loopback connects are instant: a short connect timeout would only time the router's own
        # stalls (the pool caps it below timeout_ms anyway).
        "connect_timeout_ms": 1_000,
        "health_check": {"path": "/health", "interval_seconds": 60, "timeout_ms": 300},
    }


def rig_config(flaky: MockBackend, standby: MockBackend, solo: MockBackend) -> dict[str, Any]:
    return {
        "backends": [
            _backend("chaos-flaky", flaky, PAIR_MODEL, BACKEND_TIMEOUT_MS),
            _backend("chaos-standby", standby, PAIR_MODEL, 5_000),
            _backend("chaos-solo", solo, SOLO_MODEL, BACKEND_TIMEOUT_MS),
        ],
        "models": [
            {
                "model": PAIR_MODEL,
                "backends": [
                    {"backend_id": "chaos-flaky", "weight": 100},
                    {"backend_id": "chaos-standby", "weight": 0},
                ],
                "failover_threshold": 100,
                "warmup_seconds": 0,
            },
            {
                "model": SOLO_MODEL,
                "backends": [{"backend_id": "chaos-solo", "weight": 100}],
                "failover_threshold": 100,
                "warmup_seconds": 0,
            },
        ],
        "api_keys": [
            {
                "id": "key-chaos",
                "organization_id": "org-chaos",
                "key_hash": hash_secret(API_KEY),
                "scopes": ["inference"],
            }
        ],
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
        path = workdir / "router.yaml"
        path.write_text(yaml.safe_dump(rig_config(flaky, standby, solo)), encoding="utf-8")
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


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Shot:
    """One kind of request the generator sends: ``chat``, ``chat-stream`` or ``inference``."""

    kind: str
    model: str

    @property
    def path(self) -> str:
        return INFERENCE if self.kind == "inference" else CHAT

    def body(self, request_id: str) -> dict[str, Any]:
        if self.kind == "inference":  # its envelope's request_id is the one the router passes on
            return {"request_id": request_id, "model": self.model, "payload": "chaos under load"}
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        }
        if self.kind == "chat-stream":
            body["stream"] = True
        return body


MIXED_SHOTS = tuple(
    Shot(kind, model) for model in (PAIR_MODEL, SOLO_MODEL) for kind in ("chat", "chat-stream", "inference")
)


@dataclass(frozen=True)
class Outcome:
    shot: Shot
    request_id: str  # sent as X-Request-ID, which the router passes on to the backend
    status: int | None  # None: no HTTP answer (client timeout, transport error)
    code: str | None  # the error's code (body or in-stream error event), or CLIENT_*
    decision: str | None  # X-Routing-Decision
    latency_s: float
    stream_end: str | None = None  # 200 streams: "done", "error" or "cut"
    events_before_end: int = 0


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    # One response per (path, status, error code), kept to check against the contract.
    exemplars: dict[tuple[str, int, str | None], httpx.Response] = field(default_factory=dict)
    seconds: float = 0.0


async def _send(client: httpx.AsyncClient, shot: Shot, request_id: str, result: LoadResult) -> Outcome:
    started = time.monotonic()
    headers = {"X-Request-ID": request_id}
    async with client.stream("POST", shot.path, json=shot.body(request_id), headers=headers) as response:
        decision = response.headers.get("x-routing-decision")
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        if response.status_code != 200 or not streamed:
            await response.aread()
            code = None
            if response.status_code != 200:
                code = error_code(response.json()) if response.content else "EMPTY"
            result.exemplars.setdefault((shot.path, response.status_code, code), response)
            latency = time.monotonic() - started
            return Outcome(shot, request_id, response.status_code, code, decision, latency)
        events, end, code = 0, "cut", None
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                end = "done"
                break
            code = error_code(json.loads(data))
            if code is not None:
                end = "error"
                break
            events += 1
        return Outcome(shot, request_id, 200, code, decision, time.monotonic() - started, end, events)


async def run_load(
    base_url: str,
    shots: Sequence[Shot],
    *,
    seconds: float,
    concurrency: int = CONCURRENCY,
    client_timeout_s: float = 5.0,
) -> LoadResult:
    """``concurrency`` clients, each on its own connection, send ``shots`` in turn for ``seconds``;
    a request not answered (stream included) within ``client_timeout_s`` counts as CLIENT_TIMEOUT."""
    result = LoadResult()
    turns = itertools.cycle(shots)
    stop_at = time.monotonic() + seconds

    async def client_loop() -> None:
        async with httpx.AsyncClient(
            base_url=base_url,
            trust_env=False,
            timeout=client_timeout_s,
            limits=httpx.Limits(max_connections=1),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client:
            while time.monotonic() < stop_at:
                shot, request_id = next(turns), str(uuid.uuid4())
                started = time.monotonic()
                failure = "CLIENT_TIMEOUT"
                try:
                    async with asyncio.timeout(client_timeout_s):
                        result.outcomes.append(await _send(client, shot, request_id, result))
                        continue
                except TimeoutError:
                    pass
                except httpx.HTTPError as exc:
                    failure = f"CLIENT_{type(exc).__name__}"
                latency = time.monotonic() - started
                result.outcomes.append(Outcome(shot, request_id, None, failure, None, latency))

    began = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    result.seconds = time.monotonic() - began
    return result


# ---------------------------------------------------------------- router resources


@dataclass(frozen=True)
class Resources:
    rss_kb: int  # VmRSS
    anon_kb: int  # RssAnon: the heap's share of it (VmRSS also counts the LMDB maps' file pages)
    fds: int
    backend_sockets: int  # of those fds, TCP connections to a backend (busy or pooled)
    tasks: int  # router_event_loop_tasks at the scrape

    @property
    def own_fds(self) -> int:
        """Every fd but the backend connections: listening and client sockets, files, LMDB."""
        return self.fds - self.backend_sockets


def resources(router: RouterProcess, backend_ports: frozenset[int]) -> Resources:
    pid = router.pid
    assert pid is not None, "the router is not running"
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    links = []
    for fd in os.listdir(proc / "fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            links.append(os.readlink(proc / "fd" / fd))
    sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    scrape = httpx.get(router.base_url + "/metrics", trust_env=False, timeout=5.0)
    scrape.raise_for_status()
    return Resources(
        rss_kb=_kb(status["VmRSS"]),
        anon_kb=_kb(status["RssAnon"]),
        fds=len(links),
        backend_sockets=sum(
            1 for port, inode in _tcp_peers(proc) if inode in sockets and port in backend_ports
        ),
        tasks=int(metric(scrape.text, "router_event_loop_tasks")),
    )


def _tcp_peers(proc: Path) -> Iterator[tuple[int, str]]:
    """(remote port, socket inode) of each IPv4 TCP socket in the process's network namespace."""
    for line in (proc / "net" / "tcp").read_text().splitlines()[1:]:
        fields = line.split()
        yield int(fields[2].rsplit(":", 1)[1], 16), fields[9]


def _kb(field: str) -> int:
    return int(field.split()[0])


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
    deadline = time.monotonic() + within_s
    while True:
        now = rig.resources()
        if back_to(now, before, pools_drained=pools_drained) or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)
