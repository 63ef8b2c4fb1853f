"""Faulty mock backends and a load generator for the backend chaos rig (tests/chaos/backend_fixtures.py).

``ChaosBackend`` injects its faults into a fraction of the requests it gets, one fault drawn per
request from those configured, so one backend can carry several faults at once. ``run_load`` sends
chat, streamed chat and inference requests from ``concurrency`` clients, one connection each, and
records every outcome (streams included: how each one ended) and one response per kind of answer.
It is closed-loop (each client sends when answered); the paced, retrying generator of the outage
scenarios is ``BoundedLoad`` (tests/harness/chaos_load.py).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from aiohttp import web

from tests.harness import backend_responses as responses
from tests.harness.backend import GARBAGE_BODY, BackendControls, MockBackend, _drop_connection
from tests.harness.bodies import chat_body
from tests.harness.errors import error_code

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
        streamed = {"stream": True} if self.kind == "chat-stream" else {}
        return chat_body(self.model, "one two three four five six seven eight", **streamed)


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
    started_s: float = 0.0  # time.monotonic() when it was sent

    @property
    def window(self) -> tuple[float, float]:
        """From sending to the answer, on the monotonic clock."""
        return self.started_s, self.started_s + self.latency_s


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
            return Outcome(shot, request_id, response.status_code, code, decision, latency, started_s=started)
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
        return Outcome(
            shot, request_id, 200, code, decision, time.monotonic() - started, end, events, started
        )


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
                result.outcomes.append(
                    Outcome(shot, request_id, None, failure, None, latency, started_s=started)
                )

    began = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    result.seconds = time.monotonic() - began
    return result
