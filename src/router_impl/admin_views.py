"""Pure translations between the admin API's documents and the runtime-config model.

Field names already match (``Backend``, ``ModelPolicy`` in the contract); what differs is what the
contract leaves out (``api_key_env``, ``owned_by``: config-only, never emitted, kept on replace),
numbers (prices are Decimals here, JSON numbers there) and the live state a ``BackendStatus`` adds.
No I/O here: handlers gather the live figures and pass them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import router_contract.models as contract_models

from router_impl.config.merge_patch import merge_patch
from router_impl.config.model import BackendConfig, BackendState, ModelPolicy, OrgLimits, RuntimeConfig
from router_impl.limits.state import OrgState
from router_impl.routing.decisions import RoutingDecisionRecord
from router_impl.usage.cost import micro_to_usd
from router_impl.web.responses import timestamp

# ---------------------------------------------------------------- backends


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """What the process knows about a backend right now (health registry, client, config service)."""

    breaker_state: str
    in_flight: int
    error_ratio: float
    weight_factor: float
    updated_at: datetime
    latency_p50_ms: float | None = None


def backend_config(
    backend_id: str, document: Mapping[str, Any], existing: BackendConfig | None
) -> BackendConfig:
    """The ``BackendConfig`` a ``Backend`` document describes; the path id wins, and config-only
    write-only credential references (``api_key_env``, ``api_key_file``) are kept from the backend it
    replaces unless the document names one.
    Raises pydantic's ValidationError."""
    fields: dict[str, Any] = {k: v for k, v in document.items() if k != "id"}
    if existing is not None and "api_key_env" not in fields and "api_key_file" not in fields:
        fields["api_key_env"] = existing.api_key_env
        fields["api_key_file"] = existing.api_key_file
    return BackendConfig.model_validate({**fields, "id": backend_id})


def warmup_seconds_for(config: RuntimeConfig, backend_id: str) -> int:
    """The largest warm-up window among the policies that route to ``backend_id`` (0 when none)."""
    windows = [policy.warmup_seconds for policy in config.models if backend_id in backend_ids_of(policy)]
    return max(windows, default=0)


def backend_ids_of(policy: ModelPolicy) -> set[str]:
    lists = [policy.backends, *(o.backends for o in policy.org_overrides.values())]
    return {wb.backend_id for backends in lists for wb in backends}


def policies_using(config: RuntimeConfig, backend_id: str) -> list[str]:
    return sorted(p.model for p in config.models if backend_id in backend_ids_of(p))


def backend_status(backend: BackendConfig, state: BackendState, live: LiveFigures) -> dict[str, Any]:
    """``BackendStatus``: the configuration (never ``api_key_env``), the operator state, live figures."""
    status: dict[str, Any] = {
        "id": backend.id,
        "base_url": backend.base_url,
        "protocol": backend.protocol,
        "models": list(backend.models),
        "timeout_ms": backend.timeout_ms,
        "connect_timeout_ms": backend.connect_timeout_ms,
        "max_in_flight": backend.max_in_flight,
        "health_check": backend.health_check.model_dump(mode="json"),
        "labels": dict(backend.labels),
        "state": state.state,
        "breaker_state": live.breaker_state,
        "in_flight": max(0, live.in_flight),
        "error_ratio": min(1.0, max(0.0, live.error_ratio)),
        "weight_factor": min(1.0, max(0.0, live.weight_factor)),
        "updated_at": timestamp(state.updated_at or live.updated_at),
    }
    if state.reason:
        status["state_reason"] = state.reason
    if live.latency_p50_ms is not None:
        status["latency_p50_ms"] = max(0.0, live.latency_p50_ms)
    return status


# ---------------------------------------------------------------- model policies


def model_policy(model: str, document: Mapping[str, Any], existing: ModelPolicy | None) -> ModelPolicy:
    """The ``ModelPolicy`` a document describes for ``model`` (the path's name; the document's own
    ``model``, if any, must already have been checked against it). ``owned_by`` is kept from the
    policy it replaces. Aliases are a set: repeats, and the model's own name, are dropped (the
    contract allows them). Raises pydantic's ValidationError."""
    fields: dict[str, Any] = {k: v for k, v in document.items() if k != "model"}
    if "aliases" in fields:
        fields["aliases"] = [a for a in dict.fromkeys(fields["aliases"]) if a != model]
    pricing = fields.get("pricing")
    if isinstance(pricing, Mapping):
        fields["pricing"] = {k: Decimal(str(v)) for k, v in pricing.items()}
    if existing is not None:
        fields.setdefault("owned_by", existing.owned_by)
    return ModelPolicy.model_validate({**fields, "model": model})


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _weighted(policy_backends: Any) -> list[dict[str, Any]]:
    return [
        {"backend_id": wb.backend_id, "weight": wb.weight}
        | ({"upstream_model": wb.upstream_model} if wb.upstream_model else {})
        for wb in policy_backends
    ]


def policy_document(policy: ModelPolicy) -> dict[str, Any]:
    """The contract's ``ModelPolicy`` (``owned_by`` is config-only and left out)."""
    document: dict[str, Any] = {
        "model": policy.model,
        "enabled": policy.enabled,
        "backends": _weighted(policy.backends),
        "failover_threshold": policy.failover_threshold,
        "warmup_seconds": policy.warmup_seconds,
        "retry_on": sorted(policy.retry_on),
        "deny_keys": list(policy.deny_keys),
        "org_overrides": {
            org: {"backends": _weighted(o.backends)} for org, o in policy.org_overrides.items()
        },
        "pricing": {
            "input_usd_per_1m_tokens": _number(policy.pricing.input_usd_per_1m_tokens),
            "output_usd_per_1m_tokens": _number(policy.pricing.output_usd_per_1m_tokens),
        },
        "aliases": list(policy.aliases),
        "prompt_template_tokens": policy.prompt_template_tokens.model_dump(),
    }
    if policy.allow_keys is not None:
        document["allow_keys"] = list(policy.allow_keys)
    return document


# ---------------------------------------------------------------- routing decisions


def decision_document(record: RoutingDecisionRecord) -> dict[str, Any]:
    document: dict[str, Any] = {
        "request_id": record.request_id,
        "timestamp": timestamp(record.timestamp),
        "model": record.model,
        "organization_id": record.organization_id,
        "api_key_id": record.api_key_id,
        "backend_id": record.backend_id,
        "decision": record.decision,
        "attempts": max(1, record.attempts),
        "latency_ms": max(0, record.latency_ms),
    }
    if record.warning:
        document["warning"] = record.warning[:256]
    return document


# ---------------------------------------------------------------- limits


def limits_document(limits: OrgLimits) -> dict[str, Any]:
    """``OrgLimits``: absent fields stay absent; USD amounts as JSON numbers."""
    document: dict[str, Any] = limits.model_dump(mode="python", exclude_none=True)
    budgets = document.get("budgets")
    if isinstance(budgets, dict):
        for name, value in budgets.items():
            if isinstance(value, Decimal):
                budgets[name] = float(value)
    return document


def patched_limits(existing: OrgLimits | None, patch: Mapping[str, Any]) -> OrgLimits:
    """``existing`` with a JSON Merge Patch applied, validated whole as the contract's and the
    config's ``OrgLimits`` (the patch's nested objects are checked only once merged). Raises
    pydantic's ValidationError."""
    merged = merge_patch(limits_document(existing) if existing is not None else {}, patch)
    contract_models.OrgLimits.model_validate_json(orjson.dumps(merged), strict=True)
    return OrgLimits.model_validate(merged)


def limits_state_document(organization_id: str, limits: OrgLimits, state: OrgState) -> dict[str, Any]:
    """``OrgLimitsState``: the configured limits and this moment's counters."""
    counters: dict[str, Any] = {
        "budgets": [
            {
                "period": b.period,
                "tokens_used": max(0, b.tokens_used),
                "usd_used": micro_to_usd(max(0, b.micro_usd_used)),
                "reset_at": timestamp(b.reset_at),
                **({"tokens_limit": b.tokens_limit} if b.tokens_limit is not None else {}),
                **({"usd_limit": micro_to_usd(b.micro_usd_limit)} if b.micro_usd_limit is not None else {}),
            }
            for b in state.budgets
        ]
    }
    if state.requests_remaining is not None:
        counters["requests_remaining"] = state.requests_remaining
    if state.tokens_remaining is not None:
        counters["tokens_remaining"] = state.tokens_remaining
    if state.lockout_until is not None:
        counters["lockout_until"] = timestamp(state.lockout_until)
    return {"organization_id": organization_id, "limits": limits_document(limits), "state": counters}
