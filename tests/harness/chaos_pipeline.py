"""The chaos suite's shared pipeline: routers running the full shared pipeline (Redis limits, budgets,
idempotency and audit, runtime config from an etcd prefix, usage through the LMDB outbox to Kafka)
against one Redis, etcd and Tansu broker (``ChaosStack``), organisations with one key each, and an
operator's etcd writes (``EtcdKv``).

``PipelineRouters.start(config, env=..., etcd_endpoints=...)`` seeds a fresh etcd prefix with
``config`` (a ``RuntimeConfig`` document) and starts ``router serve``; ``PipelineRouter.etcd``
writes to its prefix as an operator would. The fixtures are in tests/chaos/conftest.py.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson

from router_impl.config.layout import explode, object_key
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ObjectKind
from tests.harness import bodies
from tests.harness.backend import MockBackend
from tests.harness.config_docs import backend_doc, key_record, model_doc
from tests.harness.records import request_ref
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer
from tests.harness.wait import last_reading
from tests.telemetry.test_metrics import value as metric_value
from tests.usage.outbox_support import consume

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


@dataclass(frozen=True)
class ChaosStack:
    redis: RedisServer
    etcd: EtcdServer
    kafka: KafkaBroker


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

    def read() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for message in consume(bootstrap, topic, 0, timeout=10.0):
            if request_ref(message.record) in wanted:
                found.setdefault(request_ref(message.record), []).append(message.record)
        return found

    return last_reading(read, lambda found: found.keys() >= wanted, within_s, interval=0.5)


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
        return key_record(f"key-{self.id}", self.id, self.secret, ("inference", "audit"))

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
    health = {"path": "/health", "interval_seconds": 1, "timeout_ms": 300}
    return backend_doc(
        backend_id,
        backend.openai_base_url,
        MODEL,
        timeout_ms=2_000,
        connect_timeout_ms=200,
        health_check=health,
    )


def model_document(backend_id: str) -> dict[str, Any]:
    pricing = {"input_usd_per_1m_tokens": str(PRICE_IN), "output_usd_per_1m_tokens": str(PRICE_OUT)}
    return model_doc(MODEL, backend_id, pricing=pricing, warmup_seconds=0)


def pipeline_config(
    backends: Mapping[str, MockBackend], serving: str, orgs: Sequence[Org] = ()
) -> dict[str, Any]:
    """``MODEL`` served by backend ``serving``; every backend listed; one key per organisation, plus
    the admin key (``ADMIN_SECRET``)."""
    admin = key_record("key-chaos-admin", "org-chaos-ops", ADMIN_SECRET, ("admin", "audit"))
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
