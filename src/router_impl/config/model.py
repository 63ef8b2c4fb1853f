"""The one validated model of runtime configuration: backends, model policies and prices, API keys,
organisation limits and budgets.

Field names follow the contract's admin schemas (``Backend``, ``ModelPolicy``), so the admin
API translates by name. Every snapshot is validated whole: a policy that names an unknown
backend, a duplicate id or alias makes the whole snapshot invalid.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_impl.auth.keys import ApiKeyRecord

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class HealthCheckConfig(BaseModel):
    model_config = _FROZEN

    path: str = Field("/health", pattern=r"^/[^\s]*$", max_length=256)
    interval_seconds: int = Field(10, ge=1, le=3600)
    timeout_ms: int = Field(2_000, ge=100, le=60_000)


class BackendConfig(BaseModel):
    model_config = _FROZEN

    id: str = Field(pattern=IDENTIFIER)
    base_url: str = Field(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)
    protocol: Literal["openai"] = "openai"
    # The model names this backend knows; a policy's model is sent as the first one unless it is listed.
    models: tuple[str, ...] = ()
    timeout_ms: int = Field(30_000, ge=100, le=600_000)
    connect_timeout_ms: int = Field(2_000, ge=10, le=60_000)
    max_in_flight: int = Field(256, ge=1, le=100_000)
    health_check: HealthCheckConfig = HealthCheckConfig()
    # Name of an environment variable holding the bearer token the backend expects (never the token).
    api_key_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")
    # Or the path of a mounted file holding it (e.g. a Kubernetes Secret); read when the backend's
    # connection pool is built. At most one of the two.
    api_key_file: str | None = Field(None, pattern=r"^/[^\x00\n]{0,1023}$")
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_credential(self) -> BackendConfig:
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError("api_key_env and api_key_file are exclusive: name one credential")
        return self

    @property
    def credential(self) -> str | None:
        """Where the bearer token comes from, for logs and readiness (a name, never the token)."""
        if self.api_key_env is not None:
            return f"environment variable {self.api_key_env}"
        if self.api_key_file is not None:
            return f"file {self.api_key_file}"
        return None

    @field_validator("base_url")
    @classmethod
    def _parsable(cls, value: str) -> str:
        """A URL the HTTP client can use (e.g. no unbalanced IPv6 brackets)."""
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ValueError(f"base_url does not parse: {exc}") from None
        if not parts.hostname:
            raise ValueError("base_url has no host")
        return value


class WeightedBackend(BaseModel):
    model_config = _FROZEN

    backend_id: str = Field(pattern=IDENTIFIER)
    weight: int = Field(100, ge=0, le=1000)
    # The model name this backend knows the policy's model by (else see BackendConfig.models).
    upstream_model: str | None = Field(None, pattern=MODEL_NAME)


class OrgOverride(BaseModel):
    """A per-organisation backend list for one model (decision OVERRIDE)."""

    model_config = _FROZEN

    backends: tuple[WeightedBackend, ...] = Field(min_length=1)


BackendStateName = Literal["healthy", "degraded", "disabled"]


class BackendState(BaseModel):
    """The operator's word on a backend: the kill switch (disabled) and the degraded flag."""

    model_config = _FROZEN

    state: BackendStateName = "healthy"
    reason: str = Field("", max_length=500)
    updated_at: datetime | None = None
    updated_by: str | None = None


class ModelPricing(BaseModel):
    model_config = _FROZEN

    input_usd_per_1m_tokens: Decimal = Field(Decimal(0), ge=0)
    output_usd_per_1m_tokens: Decimal = Field(Decimal(0), ge=0)


class PromptTemplateTokens(BaseModel):
    """Tokens a backend's chat template may add to a prompt (role markers, separators): part of the
    budget reservation's upper bound (usage/tokens.py ``prompt_bound``)."""

    model_config = _FROZEN

    per_message: int = Field(8, ge=0, le=10_000)
    per_request: int = Field(16, ge=0, le=100_000)


class ModelPolicy(BaseModel):
    model_config = _FROZEN

    model: str = Field(pattern=MODEL_NAME)
    backends: tuple[WeightedBackend, ...] = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    pricing: ModelPricing = ModelPricing()
    enabled: bool = True
    owned_by: str = "api-router"
    # Consecutive failures that open a backend's circuit breaker (traffic shifts to the others).
    failover_threshold: int = Field(3, ge=1, le=100)
    # After recovery a backend's weight ramps up linearly over this window.
    warmup_seconds: int = Field(30, ge=0, le=3600)
    # Backend statuses after which the request is sent to the next backend (a 500 may have run it).
    retry_on: tuple[int, ...] = Field((502, 503, 504), max_length=100)
    allow_keys: tuple[str, ...] | None = None  # key ids; None = every key
    deny_keys: tuple[str, ...] = ()
    org_overrides: dict[str, OrgOverride] = Field(default_factory=dict)
    prompt_template_tokens: PromptTemplateTokens = PromptTemplateTokens()

    @field_validator("retry_on")
    @classmethod
    def _server_errors(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 500 <= status <= 599 for status in value):
            raise ValueError("retry_on holds backend statuses from 500 to 599")
        return value


class RateLimitConfig(BaseModel):
    """Token buckets; an absent field means no limit of that kind."""

    model_config = _FROZEN

    requests_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    burst: int | None = Field(None, ge=1, le=10_000_000)  # bucket capacity; defaults to requests_per_minute
    tokens_per_minute: int | None = Field(None, ge=1, le=10_000_000_000)


class BudgetLimits(BaseModel):
    """Budgets per period; an absent field means no budget of that kind. USD as exact decimals."""

    model_config = _FROZEN

    daily_tokens: int | None = Field(None, ge=0, le=1_000_000_000_000)
    monthly_tokens: int | None = Field(None, ge=0, le=1_000_000_000_000)
    daily_usd: Decimal | None = Field(None, ge=0, le=1_000_000_000)
    monthly_usd: Decimal | None = Field(None, ge=0, le=1_000_000_000)

    @field_validator("daily_usd", "monthly_usd")
    @classmethod
    def _whole_micro_dollars(cls, value: Decimal | None) -> Decimal | None:
        """Budgets are counted in micro-dollars: finer amounts round down (a budget never grows)."""
        return None if value is None else value.quantize(Decimal("0.000001"), rounding=ROUND_DOWN)

    @property
    def empty(self) -> bool:
        return all(
            v is None for v in (self.daily_tokens, self.monthly_tokens, self.daily_usd, self.monthly_usd)
        )


FailureMode = Literal["fail_open", "fail_closed"]


class OrgLimits(BaseModel):
    """One organisation's limits (the contract's ``OrgLimits``). Budgets absent here may come from
    the external budget service."""

    model_config = _FROZEN

    rate_limits: RateLimitConfig | None = None
    key_rate_limits: RateLimitConfig | None = None  # applies to each of the organisation's keys
    budgets: BudgetLimits | None = None
    # Redis unreachable: fail_open enforces with this process's own buckets and counters (a metric
    # and a readiness warning say so); fail_closed answers 503. Envoy's ratelimit defaults to open too.
    failure_mode: FailureMode = "fail_open"
    # A larger max_tokens is clamped to it; also what is reserved when a request sets none.
    max_tokens_cap: int | None = Field(None, ge=1, le=1_000_000)


class RuntimeConfig(BaseModel):
    model_config = _FROZEN

    backends: tuple[BackendConfig, ...] = ()
    models: tuple[ModelPolicy, ...] = ()
    api_keys: tuple[ApiKeyRecord, ...] = ()
    backend_states: dict[str, BackendState] = Field(default_factory=dict)
    org_limits: dict[str, OrgLimits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeConfig:
        """Every whole-config problem, one per line (``router config validate`` lists them all)."""
        problems = [
            *_duplicates("api_keys: key id", [k.id for k in self.api_keys]),
            *_duplicates("api_keys: key hash", [k.key_hash for k in self.api_keys]),
            *_duplicates("backends: backend id", [b.id for b in self.backends]),
            *_duplicates(
                "models: model name or alias", [n for m in self.models for n in (m.model, *m.aliases)]
            ),
        ]
        known = {b.id for b in self.backends}
        for policy in self.models:
            lists = [policy.backends, *(o.backends for o in policy.org_overrides.values())]
            for wb in (wb for backends in lists for wb in backends):
                if wb.backend_id not in known:
                    problems.append(f"models: {policy.model} names unknown backend {wb.backend_id}")
        for backend_id in self.backend_states:
            if backend_id not in known:
                problems.append(f"backend_states: unknown backend {backend_id}")
        for org in self.org_limits:
            if not _ID.match(org):
                problems.append(f"org_limits: {org!r} is not an organisation id")
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    # Lookup maps, built once per snapshot on first use (cached_property writes the instance dict
    # directly, so a frozen model allows it; reading it skips pydantic's private-attribute path).
    @cached_property
    def _policy_index(self) -> dict[str, ModelPolicy]:
        return {name: m for m in self.models for name in (m.model, *m.aliases)}

    @cached_property
    def _backend_index(self) -> dict[str, BackendConfig]:
        return {b.id: b for b in self.backends}

    def policy_for(self, model: str) -> ModelPolicy | None:
        """The policy serving ``model`` by name or alias."""
        return self._policy_index.get(model)

    def backend(self, backend_id: str) -> BackendConfig | None:
        return self._backend_index.get(backend_id)

    def state_of(self, backend_id: str) -> BackendState:
        return self.backend_states.get(backend_id) or _HEALTHY


_HEALTHY = BackendState()
_ID = re.compile(IDENTIFIER)


def _duplicates(what: str, values: list[str]) -> list[str]:
    seen: set[str] = set()
    found = []
    for value in values:
        if value in seen:
            found.append(f"{what} {value!r} appears twice")
        seen.add(value)
    return found
