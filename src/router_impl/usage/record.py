"""Builds the Kafka usage event exactly as openapi/usage-record.schema.json defines it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from router_contract.models import UsageRecord

from router_impl.ids import random_uuid4
from router_impl.usage.cost import micro_to_usd

LimitState = Literal["WITHIN_LIMIT", "RATE_LIMITED", "BUDGET_EXCEEDED"]
DecisionReason = Literal["PRIMARY", "FAILOVER", "OVERRIDE", "RATE_LIMIT", "BUDGET", "DENIED"]


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
    budget_snapshot: dict[str, Any] | None = None  # {period, tokens_remaining?, currency_remaining?}
    record_id: uuid.UUID | None = None  # None: a new random id


def build_record(facts: UsageFacts) -> UsageRecord:
    """Validated against the contract's generated model, so a record that breaks the schema never leaves."""
    metadata = dict(facts.metadata)
    if facts.usage.estimated:
        metadata["usage_estimated"] = "true"
    return UsageRecord.model_validate(
        {
            "schema_version": 1,
            "record_id": str(facts.record_id or random_uuid4()),
            "request_id": facts.request_id,
            "organization_id": facts.organization_id,
            "api_key_id": facts.api_key_id,
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
