"""Accounting for one request: its usage record and audit event, built in one place, written together.

``served`` and ``refused`` build the pair for a request that reached a backend and for one a limit
refused; ``Accounting.write`` commits both concurrently (they share the outbox's group commit) and
answers 503 when the usage record could not be stored, so nothing is served unbilled.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from router_contract.models import UsageRecord

from router_impl.errors import ApiError
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.audit import AuditEvent
from router_impl.usage.auditing import Auditing
from router_impl.usage.record import DecisionReason, LimitState, Usage, UsageFacts, build_record
from router_impl.usage.sink import UsageNotStored, UsageSink

log = structlog.get_logger("router.pipeline")

Accounted = tuple[UsageRecord, AuditEvent]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked, where, and under which ids: what every record and event of a request shares."""

    request_id: str
    organization_id: str
    api_key_id: str
    endpoint: str
    trace_id: str
    span_id: str
    stream: bool


@dataclass(frozen=True, slots=True)
class Served:
    """What a request that reached a backend came to."""

    model: str
    backend_id: str
    decision: DecisionReason
    attempts: int
    usage: Usage
    latency_ms: int
    cost_micro_usd: int
    status: int
    budget_snapshot: dict[str, Any] | None = None
    budget_metadata: dict[str, str] | None = None
    record_id: uuid.UUID | None = None  # None: a new random id


def served(who: Requester, what: Served, at: datetime) -> Accounted:
    record = build_record(
        UsageFacts(
            request_id=who.request_id,
            organization_id=who.organization_id,
            api_key_id=who.api_key_id,
            model=what.model,
            backend_id=what.backend_id,
            usage=what.usage,
            latency_ms=what.latency_ms,
            cost_micro_usd=what.cost_micro_usd,
            decision_reason=what.decision,
            retry_count=what.attempts - 1,
            endpoint=who.endpoint,
            status_code=what.status,
            stream=who.stream,
            trace_id=who.trace_id,
            span_id=who.span_id,
            timestamp=at,
            budget_snapshot=what.budget_snapshot,
            metadata=dict(what.budget_metadata or {}),
            record_id=what.record_id,
        )
    )
    event = AuditEvent(
        request_id=who.request_id,
        organization_id=who.organization_id,
        api_key_id=who.api_key_id,
        action="REQUEST_ALLOWED",
        decision_reason=what.decision,
        timestamp=at,
        routing_backend_id=what.backend_id,
        trace_id=who.trace_id,
        completed_at=at,
        metadata={"model": what.model, "status": str(what.status), "endpoint": who.endpoint},
    )
    return record, event


def refused(
    who: Requester, *, model: str, code: str, scope: str, limit_state: LimitState, status: int, at: datetime
) -> Accounted:
    """A limit's refusal: billed at zero, with the limit state and which limit (code, scope)."""
    record = build_record(
        UsageFacts(
            request_id=who.request_id,
            organization_id=who.organization_id,
            api_key_id=who.api_key_id,
            model=model,
            backend_id="",
            usage=Usage(0, 0),
            latency_ms=0,
            cost_micro_usd=0,
            decision_reason="RATE_LIMIT",  # rate limit or budget: limit_state and denial_code tell which
            endpoint=who.endpoint,
            status_code=status,
            stream=who.stream,
            trace_id=who.trace_id,
            span_id=who.span_id,
            timestamp=at,
            limit_state=limit_state,
            metadata={"denial_code": code, "limit_scope": scope},
        )
    )
    event = AuditEvent(
        request_id=who.request_id,
        organization_id=who.organization_id,
        api_key_id=who.api_key_id,
        action="REQUEST_DENIED",
        decision_reason=code,
        timestamp=at,
        limit_state=limit_state,
        trace_id=who.trace_id,
        metadata={"model": model, "scope": scope, "endpoint": who.endpoint},
    )
    return record, event


class Accounting:
    def __init__(self, sink: UsageSink, auditing: Auditing, tracer: Tracing | None = None) -> None:
        self.sink = sink
        self.auditing = auditing
        self.tracer = tracer or Tracing()

    async def write(self, accounted: Accounted) -> None:
        """The usage record and the audit event, written together (they share one group commit)."""
        record, event = accounted
        with self.tracer.span("usage.write", {"router.audit.action": event.action}):
            await asyncio.gather(self._write_usage(record), self.auditing.record(event))

    async def _write_usage(self, record: UsageRecord) -> None:
        try:
            await self.sink.emit(record)
        except UsageNotStored as exc:
            log.error("usage_record_not_stored", error=str(exc)[:200])
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Usage accounting is unavailable, so the request is not billed; retry later.",
                headers={"Retry-After": "5"},
            ) from exc
