"""A whole pipeline in process: the fake backend port, the embedded stores, kept records and events.

Everything real but the backends (``fake_backends.FakeBackends``) and where records go (kept in
lists): the routing engine, the dispatcher and breakers, the memory idempotency store, the limits
service on the memory store. Tests drive ``rig.pipeline`` with ``rig.call(...)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from router_contract.models import UsageRecord

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.auth.keys import InMemoryKeyStore
from router_impl.config.model import BackendConfig, ModelPolicy, OrgLimits, RuntimeConfig, WeightedBackend
from router_impl.limits.idempotency_memory import MemoryIdempotencyStore
from router_impl.limits.service import LimitsService
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.pipeline import Call, Kind, Pipeline, fingerprint
from router_impl.routing.decisions import DecisionLog
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import RoutingEngine
from router_impl.routing.health import BackendHealth
from router_impl.usage.audit import AuditEvent
from router_impl.usage.auditing import Auditing
from router_impl.usage.sink import UsageNotStored
from tests.harness.bodies import chat_body
from tests.harness.clock import ManualClock
from tests.harness.fake_backends import FakeBackends

ORG = "org-rig"
KEY = "key-rig"
MODEL = "m"
# Budget periods follow this clock; a day not yet ended wherever the suite runs.
NOON = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)


@dataclass
class KeptUsage:
    """A usage sink that keeps records; ``failing`` makes it refuse them as a full disk would."""

    records: list[UsageRecord] = field(default_factory=list)
    failing: bool = False

    async def emit(self, record: UsageRecord) -> None:
        if self.failing:
            raise UsageNotStored("disk full")
        self.records.append(record)


@dataclass
class KeptAudit:
    events: list[AuditEvent] = field(default_factory=list)

    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        self.events.append(event)

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        return next((e for e in self.events if e.request_id == request_id), None)

    async def query(self, query: Any) -> Any:
        raise NotImplementedError


@dataclass
class Rig:
    pipeline: Pipeline
    backends: FakeBackends
    usage: KeptUsage
    audit: KeptAudit
    health: BackendHealth
    idempotency: MemoryIdempotencyStore
    limits: LimitsService
    accepting: list[bool]
    principal: Principal = field(
        default_factory=lambda: Principal(KEY, ORG, frozenset({"inference"}), None, signature_required=False)
    )

    def call(
        self,
        body: dict[str, Any] | None = None,
        *,
        kind: Kind = "chat",
        key: str | None = None,
        request_id: str = "0b7f6d4e-2f0b-4c55-9a8e-5c1e8f3a7d7b",
    ) -> Call:
        body = body if body is not None else chat_body(MODEL, "hi")
        path = {
            "chat": "/v1/chat/completions",
            "completion": "/v1/completions",
            "embedding": "/v1/embeddings",
        }
        raw = repr(sorted(body.items())).encode()
        return Call(
            principal=self.principal,
            kind=kind,
            body=body,
            endpoint=path[kind],
            fingerprint=fingerprint("POST", path[kind], raw),
            idempotency_key=key,
            request_id=request_id,
            trace_id="1" * 32,
            span_id="2" * 16,
        )


def backend(backend_id: str) -> BackendConfig:
    return BackendConfig(id=backend_id, base_url=f"http://{backend_id}.invalid/v1")


def rig(
    *,
    backend_ids: tuple[str, ...] = ("a", "b"),
    org_limits: OrgLimits | None = None,
    **policy: Any,
) -> Rig:
    """Model ``m`` served by ``backend_ids`` with weights 100, 0, 0, ...: ``a`` first, then the rest."""
    weights = [WeightedBackend(backend_id=b, weight=100 if i == 0 else 0) for i, b in enumerate(backend_ids)]
    config = RuntimeConfig(
        backends=tuple(backend(b) for b in backend_ids),
        models=(ModelPolicy(model=MODEL, backends=tuple(weights), **policy),),
        org_limits={ORG: org_limits} if org_limits is not None else {},
    )
    backends = FakeBackends()
    health = BackendHealth(ManualClock())
    usage, audit = KeptUsage(), KeptAudit()
    idempotency = MemoryIdempotencyStore()
    limits = LimitsService(config=lambda: config, local=MemoryLimitStore(), now=lambda: NOON)
    accepting = [True]
    pipeline = Pipeline(
        config=lambda: config,
        authenticator=Authenticator(InMemoryKeyStore()),
        backends=backends,
        engine=RoutingEngine(health, random.Random(7)),
        dispatcher=Dispatcher(backends, health),
        decisions=DecisionLog(),
        idempotency=idempotency,
        usage=usage,
        now=lambda: NOON,
        limits=limits,
        auditing=Auditing(audit),
        accepting=lambda: accepting[0],
    )
    return Rig(pipeline, backends, usage, audit, health, idempotency, limits, accepting)
