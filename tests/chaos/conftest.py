"""Chaos fixtures: the package's own Redis, etcd and Kafka (tests stop them), routers running the full
shared pipeline against them, and a bounded load generator that records every outcome.

- ``chaos_stack`` (package): a Redis, an etcd and a Tansu broker of this package alone, with the
  usage and audit topics created. A test that stops, freezes or kills one restores it before it ends.
- ``pipeline_router`` (function): ``pipeline_router(config, env=..., etcd_endpoints=...)`` seeds a
  fresh etcd prefix with ``config`` (a ``RuntimeConfig`` document) and starts ``router serve`` with
  Redis limits, budgets, idempotency and audit, runtime config from that prefix and usage through the
  LMDB outbox to Kafka. ``PipelineRouter.etcd`` writes to its prefix as an operator would.
- ``BoundedLoad``: ``concurrency`` async clients at most ``rate`` requests/s in total, each request
  bounded by a client timeout, optionally retried (same headers, so the same Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self

import aiohttp
import httpx
import orjson
import pytest

from router_impl.auth.keys import hash_secret
from router_impl.config.layout import explode, object_key
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ObjectKind
from tests.conftest import _started
from tests.harness import bodies
from tests.harness.backend import MockBackend
from tests.harness.errors import error_code
from tests.harness.kafka import create_topic
from tests.harness.records import request_ref
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer
from tests.telemetry.test_metrics import value as metric_value
from tests.usage.outbox_support import consume

CHAT = "/v1/chat/completions"
MODEL = "chaos-model"
USAGE_TOPIC = "usage.records.v1"
AUDIT_TOPIC = "audit.events.v1"
SECRET_KEY = "chaos-router-secret-key-0123456789abcdef"
ADMIN_SECRET = "rk_chaos_admin"
# A prompt of n three-letter words is estimated at n tokens and counted as n by the mock backend,
# which echoes at most max_tokens words: each request reserves and bills exactly PER_REQUEST_TOKENS.
PROMPT_WORDS = 5
MAX_TOKENS = 5
PER_REQUEST_TOKENS = PROMPT_WORDS + MAX_TOKENS
PRICE_IN, PRICE_OUT = Decimal("3.00"), Decimal("15.00")  # USD per million tokens: 90 micro-USD a request
ROUTER_ENV = {
    "ROUTER_SECRET_KEY": SECRET_KEY,
    "ROUTER_ACCESS_LOG": "false",
    "ROUTER_REDIS_TIMEOUT_SECONDS": "0.25",
    "ROUTER_KAFKA_DELIVERY_TIMEOUT_SECONDS": "3",
    "ROUTER_IDEMPOTENCY_LEASE_SECONDS": "2",  # a key held by a killed router is free again soon
    "ROUTER_REQUEST_TIMEOUT_SECONDS": "2",
}


# ---------------------------------------------------------------- services


@dataclass(frozen=True)
class ChaosStack:
    redis: RedisServer
    etcd: EtcdServer
    kafka: KafkaBroker


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    with contextlib.ExitStack() as stack:
        redis = _started(lambda: RedisServer(tmp_path_factory.mktemp("chaos-redis")))
        stack.callback(redis.close)
        etcd = _started(lambda: EtcdServer(tmp_path_factory.mktemp("chaos-etcd")))
        stack.callback(etcd.close)
        kafka = _started(lambda: KafkaBroker(tmp_path_factory.mktemp("chaos-tansu")))
        stack.callback(kafka.close)
        for topic in (USAGE_TOPIC, AUDIT_TOPIC):
            create_topic(kafka.bootstrap, topic, partitions=2)
        yield ChaosStack(redis, etcd, kafka)


class EtcdKv:
    """An operator's writes under one prefix, through etcd's JSON gateway: synchronous, and no gRPC
    channel tied to an event loop."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix

    def put(self, key: str, value: bytes) -> int:
        """Put ``prefix + key``; the new revision."""
        return self._revision("put", {"key": _b64(self.prefix + key), "value": _b64(value)})

    def put_object(self, kind: ObjectKind, object_id: str, document: Mapping[str, Any]) -> int:
        return self.put(object_key(kind, object_id), orjson.dumps(document))

    def revision(self) -> int:
        return self._revision("range", {"key": _b64(self.prefix), "limit": 1})

    def compact(self, revision: int) -> None:
        self._call("compaction", {"revision": revision, "physical": True})

    def _revision(self, operation: str, body: dict[str, Any]) -> int:
        return int(self._call(operation, body)["header"]["revision"])

    def _call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/v3/kv/{operation}", json=body, trust_env=False, timeout=5.0)
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def records_by_request(
    bootstrap: str, topic: str, request_ids: Collection[str], within_s: float = 20.0
) -> dict[str, list[dict[str, Any]]]:
    """The messages of ``topic`` about these requests (the package's tests share the topic), read
    again until every request has one or ``within_s`` has passed."""
    wanted = set(request_ids)
    deadline = time.monotonic() + within_s
    while True:
        found: dict[str, list[dict[str, Any]]] = {}
        for message in consume(bootstrap, topic, 0, timeout=10.0):
            if request_ref(message.record) in wanted:
                found.setdefault(request_ref(message.record), []).append(message.record)
        if found.keys() >= wanted or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Org:
    """An organisation with one inference key; ``limits`` is its ``OrgLimits`` document."""

    id: str
    limits: Mapping[str, Any] = field(default_factory=dict)

    @property
    def secret(self) -> str:
        return f"rk_{self.id.replace('-', '_')}"

    @property
    def key_record(self) -> dict[str, Any]:
        return {
            "id": f"key-{self.id}",
            "organization_id": self.id,
            "key_hash": hash_secret(self.secret),
            "scopes": ["inference", "audit"],
        }

    def headers(self, request_id: str, *, idempotent: bool = False) -> dict[str, str]:
        """Bearer auth and X-Request-ID; with ``idempotent`` the request id is the Idempotency-Key too."""
        headers = {"Authorization": f"Bearer {self.secret}", "X-Request-ID": request_id}
        if idempotent:
            headers["Idempotency-Key"] = request_id
        return headers


def new_org(name: str, **limits: Any) -> Org:
    """An organisation no other run has used (Redis counters outlive a test)."""
    return Org(f"{name}-{uuid.uuid4().hex[:8]}", limits)


def backend_document(backend_id: str, backend: MockBackend) -> dict[str, Any]:
    return {
        "id": backend_id,
        "base_url": backend.openai_base_url,
        "models": [MODEL],
        "timeout_ms": 2_000,
        "connect_timeout_ms": 200,
        "health_check": {"path": "/health", "interval_seconds": 1, "timeout_ms": 300},
    }


def model_document(backend_id: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "backends": [{"backend_id": backend_id, "weight": 100}],
        "pricing": {"input_usd_per_1m_tokens": str(PRICE_IN), "output_usd_per_1m_tokens": str(PRICE_OUT)},
        "warmup_seconds": 0,
    }


def pipeline_config(
    backends: Mapping[str, MockBackend], serving: str, orgs: Sequence[Org] = ()
) -> dict[str, Any]:
    """``MODEL`` served by backend ``serving``; every backend listed; one key per organisation, plus
    the admin key (``ADMIN_SECRET``)."""
    admin = {
        "id": "key-chaos-admin",
        "organization_id": "org-chaos-ops",
        "key_hash": hash_secret(ADMIN_SECRET),
        "scopes": ["admin", "audit"],
    }
    return {
        "backends": [backend_document(i, b) for i, b in backends.items()],
        "models": [model_document(serving)],
        "api_keys": [admin, *(org.key_record for org in orgs)],
        "org_limits": {org.id: dict(org.limits) for org in orgs if org.limits},
    }


def chat_body() -> dict[str, Any]:
    """A request that reserves and bills exactly PER_REQUEST_TOKENS."""
    return bodies.chat_body(MODEL, bodies.words(PROMPT_WORDS), max_tokens=MAX_TOKENS)


# ---------------------------------------------------------------- routers


@dataclass(frozen=True)
class PipelineRouter:
    process: RouterProcess
    etcd: EtcdKv  # the router's config prefix

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def metric(self, name: str, **labels: str) -> float:
        scrape = httpx.get(self.base_url + "/metrics", trust_env=False, timeout=5.0)
        scrape.raise_for_status()
        return metric_value(scrape.text, name, **labels)

    def readiness(self, check: str) -> str:
        """The status (pass, warn, fail) of one readiness check."""
        body = httpx.get(self.base_url + "/v1/status/readyz", trust_env=False, timeout=5.0).json()
        return str(next(c for c in body["checks"] if c["name"] == check)["status"])

    def org_limits(self, org: Org) -> dict[str, Any]:
        answer = httpx.get(
            f"{self.base_url}/v1/admin/orgs/{org.id}/limits",
            headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
            trust_env=False,
            timeout=5.0,
        )
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document


class PipelineRouters:
    """Starts routers on the whole shared pipeline of ``stack``, each on a new etcd prefix."""

    def __init__(self, stack: ChaosStack, fleet: RouterFleet) -> None:
        self.stack, self.fleet = stack, fleet

    def start(
        self,
        config: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        etcd_endpoints: str | None = None,
    ) -> PipelineRouter:
        """Seed the prefix with ``config`` (a ``RuntimeConfig`` document), then start the router;
        ``etcd_endpoints`` points it at etcd through something else (a proxy)."""
        kv = EtcdKv(self.stack.etcd.url, f"/chaos-{uuid.uuid4().hex[:12]}/")
        for key, value in explode(RuntimeConfig.model_validate(config)).items():
            kv.put(key, value)
        full_env = {
            **ROUTER_ENV,
            "ROUTER_REDIS_URL": self.stack.redis.url,
            "ROUTER_ETCD_ENDPOINTS": etcd_endpoints or self.stack.etcd.endpoints,
            "ROUTER_ETCD_PREFIX": kv.prefix,
            "ROUTER_KAFKA_BOOTSTRAP": self.stack.kafka.bootstrap,
            **(env or {}),
        }
        return PipelineRouter(self.fleet.start(env=full_env), kv)


PipelineRouterFactory = Callable[..., PipelineRouter]


@pytest.fixture
def backend() -> Iterator[MockBackend]:
    """A healthy backend serving MODEL after 5 ms."""
    with MockBackend(models=(MODEL,)) as mock:
        mock.configure(latency_ms=5)
        yield mock


@pytest.fixture
def pipeline_router(
    chaos_stack: ChaosStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRouterFactory]:
    """``pipeline_router(config, env={...}, etcd_endpoints="host:port")``: see ``PipelineRouters``;
    every router stops at teardown."""
    fleet = RouterFleet(tmp_path_factory.mktemp("chaos-routers"))
    yield PipelineRouters(chaos_stack, fleet).start
    fleet.close()


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Shot:
    """One request to send; ``label`` groups outcomes (e.g. by organisation)."""

    label: str
    request_id: str
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    path: str = CHAT


@dataclass(frozen=True)
class Retry:
    """Send a shot again, same headers and body, after a transport error or one of ``statuses``."""

    statuses: frozenset[int] = frozenset({409, 503})
    give_up_after_s: float = 20.0
    pause_s: float = 0.2


@dataclass(frozen=True)
class Outcome:
    """The fate of one shot. Times are seconds since the load began; ``latency_s`` is the longest
    single attempt, ``elapsed_s`` the whole request with its retries."""

    label: str
    request_id: str
    started_s: float
    elapsed_s: float
    latency_s: float
    attempts: int
    status: int | None  # None: no HTTP answer (client timeout, connection refused or reset)
    code: str | None  # the error code of a non-2xx answer, or the client-side error's class name
    backend: str | None  # X-Routing-Backend
    replayed: bool  # Idempotent-Replayed
    first_failure: str | None  # why the first attempt failed, when it was retried


class BoundedLoad:
    """At most ``concurrency`` requests in flight and ``rate`` started per second, from a thread of
    its own (the test may block meanwhile); each attempt ends within ``timeout_s``.

    ``shots(n)`` makes the n-th request. Use as a context manager; ``outcomes`` grows as requests end.
    """

    def __init__(
        self,
        base_url: str,
        shots: Callable[[int], Shot],
        *,
        concurrency: int = 12,
        rate: float = 150.0,
        timeout_s: float = 5.0,
        retry: Retry | None = None,
    ) -> None:
        self.base_url = base_url
        self.shots = shots
        self.concurrency = concurrency
        self.interval_s = concurrency / rate  # per client
        self.timeout_s = timeout_s
        self.retry = retry
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._numbers = itertools.count()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.crashed: BaseException | None = None

    def __enter__(self) -> Self:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        longest = self.timeout_s + (self.retry.give_up_after_s if self.retry else 0.0)
        self._thread.join(longest + 10.0)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self.crashed is not None:
            raise AssertionError("the load generator crashed") from self.crashed

    def now(self) -> float:
        """Seconds since the load began, on the clock of ``Outcome`` times."""
        return time.monotonic() - self._began

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def between(self, start_s: float, end_s: float, label: str | None = None) -> list[Outcome]:
        """Outcomes of requests started in [start_s, end_s), of one label or all."""
        return [
            o for o in self.outcomes if start_s <= o.started_s < end_s and (label is None or o.label == label)
        ]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.crashed = exc

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        async with aiohttp.ClientSession(self.base_url, connector=connector) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval_s * index / self.concurrency  # spread the starts
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + self.interval_s, loop.time())
            if self._stop.is_set():
                return
            outcome = await self._send(session, self.shots(next(self._numbers)))
            with self._lock:
                self._outcomes.append(outcome)

    async def _send(self, session: aiohttp.ClientSession, shot: Shot) -> Outcome:
        started = self.now()
        attempts, longest, first_failure = 0, 0.0, None
        while True:
            attempts += 1
            began = time.monotonic()
            status, code, headers = await self._attempt(session, shot)
            longest = max(longest, time.monotonic() - began)
            retryable = status is None or status in (self.retry.statuses if self.retry else ())
            if (
                self.retry is None
                or not retryable
                or self.now() - started + self.retry.pause_s > self.retry.give_up_after_s
            ):
                return Outcome(
                    label=shot.label,
                    request_id=shot.request_id,
                    started_s=started,
                    elapsed_s=self.now() - started,
                    latency_s=longest,
                    attempts=attempts,
                    status=status,
                    code=code,
                    backend=headers.get("X-Routing-Backend"),
                    replayed=headers.get("Idempotent-Replayed") == "true",
                    first_failure=first_failure,
                )
            first_failure = first_failure or (code if status is None else f"{status} {code}")
            await asyncio.sleep(self.retry.pause_s)

    async def _attempt(
        self, session: aiohttp.ClientSession, shot: Shot
    ) -> tuple[int | None, str | None, Mapping[str, str]]:
        try:
            async with session.post(
                shot.path,
                data=orjson.dumps(shot.body),
                headers={"Content-Type": "application/json", **shot.headers},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                raw = await response.read()
                code = None
                if response.status >= 400:
                    try:
                        code = error_code(orjson.loads(raw)) or "NO_CODE"
                    except orjson.JSONDecodeError:
                        code = "NOT_JSON"
                return response.status, code, response.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, type(exc).__name__, {}


def tally(outcomes: Sequence[Outcome]) -> Counter[str]:
    """Counts by fate: ``served`` (200), ``denied_429``, ``refused_503``, ``errors`` (no HTTP answer),
    ``other`` (any other status)."""
    found: Counter[str] = Counter()
    for o in outcomes:
        if o.status == 200:
            found["served"] += 1
        elif o.status == 429:
            found["denied_429"] += 1
        elif o.status == 503:
            found["refused_503"] += 1
        elif o.status is None:
            found["errors"] += 1
        else:
            found["other"] += 1
    return found


def summary(name: str, outcomes: Sequence[Outcome], **extra: object) -> str:
    """One line per scenario, printed so that runs can be tabulated."""
    counts = tally(outcomes)
    longest = max((o.latency_s for o in outcomes), default=0.0)
    parts = [
        f"served={counts['served']}",
        f"denied_429={counts['denied_429']}",
        f"refused_503={counts['refused_503']}",
        f"errors={counts['errors']}",
        f"other={counts['other']}",
        f"max_latency={longest:.2f}s",
        *(f"{key}={value}" for key, value in extra.items()),
    ]
    return f"CHAOS {name}: " + ", ".join(parts)
