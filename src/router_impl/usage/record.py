"""Builds the Kafka usage event exactly as openapi/usage-record.schema.json defines it.

Every record also validates against the platform's original usage-record schema
(../shared/seed/usage-record.schema.yaml): ``request_id`` and ``api_key_id`` are UUIDs there, so an
id that is not one (a config-declared key id, a client's X-Request-ID) is written as its
deterministic UUIDv5 (``ids.uuid_for``) and the id itself goes into ``metadata``
(``api_key_ref`` / ``request_ref``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from router_contract.models import UsageRecord

from router_impl.ids import as_uuid, random_uuid4, uuid_for
from router_impl.usage.cost import micro_to_usd

LimitState = Literal["WITHIN_LIMIT", "RATE_LIMITED", "BUDGET_EXCEEDED"]
# RATE_LIMIT: denied by a limit, a rate limit or a budget (limit_state tells which; the error code
# is in metadata.denial_code), as in the platform's original schema.
DecisionReason = Literal["PRIMARY", "FAILOVER", "OVERRIDE", "RATE_LIMIT"]


@dataclass(frozen=True)
class Usage:
    tokens_input: int
    tokens_output: int
    estimated: bool = False


@dataclass(frozen=True)
class UsageFacts:
    """Everything the pipeline knows about one finished request."""

    request_id: str
    organization_id: str
    api_key_id: str
    model: str
    backend_id: str
    usage: Usage
    latency_ms: int
    cost_micro_usd: int
    decision_reason: DecisionReason
    endpoint: str
    status_code: int
    stream: bool
    trace_id: str
    span_id: str
    timestamp: datetime
    limit_state: LimitState = "WITHIN_LIMIT"
    retry_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    budget_snapshot: dict[str, Any] | None = None  # {period, tokens_remaining, currency_remaining}
    record_id: uuid.UUID | None = None  # None: a new random id


def build_record(facts: UsageFacts) -> UsageRecord:
    """Validated against the contract's generated model, so a record that breaks the schema never leaves."""
    metadata = dict(facts.metadata)
    if facts.usage.estimated:
        metadata["usage_estimated"] = "true"
    api_key_id = as_uuid(facts.api_key_id)
    if api_key_id is None:
        api_key_id = uuid_for(facts.api_key_id)
        metadata["api_key_ref"] = facts.api_key_id
    request_id = as_uuid(facts.request_id)
    if request_id is None:
        request_id = uuid_for(facts.request_id)
        metadata["request_ref"] = facts.request_id
    return UsageRecord.model_validate(
        {
            "schema_version": 1,
            "record_id": str(facts.record_id or random_uuid4()),
            "request_id": request_id,
            "organization_id": facts.organization_id,
            "api_key_id": api_key_id,
            "model": facts.model,
            "backend_id": facts.backend_id,
            "tokens_input": facts.usage.tokens_input,
            "tokens_output": facts.usage.tokens_output,
            "latency_ms": facts.latency_ms,
            "cost_usd": micro_to_usd(facts.cost_micro_usd),
            "cost_micro_usd": facts.cost_micro_usd,
            "limit_state": facts.limit_state,
            "decision_reason": facts.decision_reason,
            "timestamp": facts.timestamp,
            "retry_count": facts.retry_count,
            "trace_id": facts.trace_id,
            "span_id": facts.span_id,
            "endpoint": facts.endpoint,
            "status_code": facts.status_code,
            "stream": facts.stream,
            "metadata": metadata,
            **({"budget_snapshot": facts.budget_snapshot} if facts.budget_snapshot is not None else {}),
        }
    )
