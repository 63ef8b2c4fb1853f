"""The routing engine: for one request, the ordered list of backends to try and why. Pure: the
configuration snapshot, the health view and the random source are all passed in.

Order of the candidate list (each tier after the previous one):
  1. backends the operator calls healthy, with weight > 0, in weighted random order without replacement
     (draw one with probability weight x factor / total, remove it, draw again), so the first
     candidate follows the weights exactly and the rest are a weighted fallback order;
  2. those with weight 0 (failover-only alternates), in configuration order;
  3. the same two tiers for backends the operator flagged degraded: used only when no healthy
     one is left.
Disabled backends (the kill switch) and backends whose breaker is open or whose health check
fails never appear; a half-open backend appears at the warm-up floor weight, for its one trial.

``RoutingEngine`` keeps, per configuration snapshot and (policy, override), what does not change
between requests: the candidates and their cumulative weights. While every listed backend is fully
available and none is flagged degraded, a request only draws its order from them (same weighted
draws, fresh randomness per request); otherwise it takes ``plan_route``'s full path.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from router_impl.config.model import BackendConfig, ModelPolicy, RuntimeConfig, WeightedBackend
from router_impl.errors import ApiError
from router_impl.routing.health import FULLY_AVAILABLE, Availability, AvailabilityReason, HealthView

RouteReason = Literal["PRIMARY", "FAILOVER", "OVERRIDE"]
T = TypeVar("T")
MAX_WARNING_CHARS = 256  # the contract's X-Routing-Warning: printable ASCII, at most 256

_WHY: dict[AvailabilityReason, str] = {
    "half_open": "breaker half-open",
    "trial_in_flight": "breaker half-open",
    "breaker_open": "breaker open",
    "probe_failed": "health check failing",
    "warming_up": "warming up",
}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str  # as the client named it: the policy's model or an alias
    organization_id: str
    key_id: str


@dataclass(frozen=True, slots=True)
class Candidate:
    backend: BackendConfig
    backend_model: str  # the model name to send to this backend
    weight: float  # configured weight x health factor (0 for failover-only alternates)
    degraded: bool = False  # the operator flagged it degraded; serving from it deserves a warning


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """``reason`` and ``warning`` describe the first candidate; ask ``reason_at``/``warning_at``
    for the one that actually served."""

    policy: ModelPolicy
    candidates: tuple[Candidate, ...]
    reason: RouteReason
    warning: str | None
    skipped: tuple[tuple[str, str], ...] = ()  # (backend id, why) for impaired weighted backends

    def reason_at(self, index: int) -> RouteReason:
        """Moving on to a later candidate is a failover, whatever list it came from."""
        return self.reason if index == 0 else "FAILOVER"

    def warning_at(self, index: int) -> str | None:
        return _warning(self.skipped, self.candidates[index])


class RoutingEngine:
    """The engine with its health view and random source bound (built once in ``app.py``)."""

    def __init__(self, health: HealthView, rng: random.Random) -> None:
        self._health = health
        self._rng = rng
        self._snapshot: RuntimeConfig | None = None
        self._plans: dict[tuple[str, str | None], _SteadyPlan | None] = {}

    def candidates(self, snapshot: RuntimeConfig, request: RouteRequest) -> RouteDecision:
        policy = snapshot.policy_for(request.model)
        if policy is None or not policy.enabled:
            return plan_route(snapshot, self._health, request, self._rng)  # raises the right error
        _check_key(policy, request.key_id)
        if snapshot is not self._snapshot:
            self._snapshot, self._plans = snapshot, {}
        org = request.organization_id if request.organization_id in policy.org_overrides else None
        key = (policy.model, org)
        try:
            plan = self._plans[key]
        except KeyError:
            plan = self._plans[key] = _steady_plan(snapshot, policy, org)
        health = self._health
        warmup = policy.warmup_seconds
        for backend_id in () if plan is None else plan.backend_ids:
            availability = health.availability(backend_id, warmup)
            if availability is not FULLY_AVAILABLE and availability != FULLY_AVAILABLE:
                plan = None
                break
        if plan is None:
            return plan_route(snapshot, health, request, self._rng)
        return RouteDecision(policy, plan.draw(self._rng), plan.reason, None)


@dataclass(frozen=True, slots=True)
class _SteadyPlan:
    """The candidates of one (policy, override) while all are fully available and none degraded."""

    backend_ids: tuple[str, ...]
    weighted: tuple[Candidate, ...]  # weight > 0, in configuration order
    cumulative: tuple[float, ...]  # running sums of their weights
    alternates: tuple[Candidate, ...]  # weight 0, in configuration order
    reason: RouteReason

    def draw(self, rng: random.Random) -> tuple[Candidate, ...]:
        """The weighted ones in weighted random order without replacement, then the alternates."""
        weighted = self.weighted
        if len(weighted) < 2:
            return weighted + self.alternates
        point = rng.random() * self.cumulative[-1]
        first = min(bisect_right(self.cumulative, point), len(weighted) - 1)
        rest = weighted[:first] + weighted[first + 1 :]
        if len(rest) > 1:
            rest = tuple(weighted_order(rest, [c.weight for c in rest], rng))
        return (weighted[first], *rest, *self.alternates)


def _steady_plan(snapshot: RuntimeConfig, policy: ModelPolicy, org: str | None) -> _SteadyPlan | None:
    """None when an operator flag (degraded) makes the full path necessary, or nothing is listed."""
    listed = policy.backends if org is None else policy.org_overrides[org].backends
    weighted: list[Candidate] = []
    alternates: list[Candidate] = []
    ids: list[str] = []
    for entry in _unique(listed):
        backend = snapshot.backend(entry.backend_id)
        operator = snapshot.state_of(entry.backend_id).state
        if backend is None or operator == "disabled":
            continue
        if operator == "degraded":
            return None
        ids.append(backend.id)
        candidate = Candidate(
            backend, entry.upstream_model or backend_model(policy, backend), float(entry.weight)
        )
        (weighted if entry.weight > 0 else alternates).append(candidate)
    if not ids:
        return None
    sums: list[float] = []
    total = 0.0
    for candidate in weighted:
        total += candidate.weight
        sums.append(total)
    reason: RouteReason = "FAILOVER" if not weighted else "PRIMARY" if org is None else "OVERRIDE"
    return _SteadyPlan(tuple(ids), tuple(weighted), tuple(sums), tuple(alternates), reason)


@dataclass(frozen=True, slots=True)
class _Entry:
    backend: BackendConfig
    weight: int
    availability: Availability
    degraded: bool
    upstream_model: str | None = None

    @property
    def effective(self) -> float:
        return self.weight * self.availability.weight_factor


def policy_named(
    snapshot: RuntimeConfig, model: str, available: Callable[[], Sequence[str]] | None = None
) -> ModelPolicy:
    """The policy serving ``model`` (a name or an alias), or MODEL_NOT_FOUND (the one place it is
    raised for a request), naming the ``available`` models when the caller knows them."""
    policy = snapshot.policy_for(model)
    if policy is None:
        listed = (
            "" if available is None else f" Available models: {', '.join(sorted(available())) or 'none'}."
        )
        raise ApiError("MODEL_NOT_FOUND", f"Unknown model '{model}'.{listed}")
    return policy


def plan_route(
    snapshot: RuntimeConfig, health: HealthView, request: RouteRequest, rng: random.Random
) -> RouteDecision:
    """The candidates for ``request``, best first.

    Raises ``MODEL_NOT_FOUND`` for an unknown model (callers wanting to list the available models
    check first), ``FORBIDDEN`` when the policy's allow/deny lists exclude the key, and
    ``NO_BACKEND_AVAILABLE`` when the model is switched off or no backend is usable.
    """
    policy = policy_named(snapshot, request.model)
    _check_key(policy, request.key_id)
    if not policy.enabled:
        raise ApiError("NO_BACKEND_AVAILABLE", f"Model '{policy.model}' is switched off.")
    override = policy.org_overrides.get(request.organization_id)
    listed = override.backends if override is not None else policy.backends

    entries: list[_Entry] = []
    skipped: list[tuple[str, str]] = []
    unusable: list[tuple[str, str]] = []
    for weighted in _unique(listed):
        backend = snapshot.backend(weighted.backend_id)
        operator = snapshot.state_of(weighted.backend_id).state
        if backend is None or operator == "disabled":
            continue  # the kill switch takes a backend out of the policy; skipping it is no failover
        availability = health.availability(backend.id, policy.warmup_seconds)
        degraded = operator == "degraded"
        impaired = degraded or not availability.full
        if impaired and weighted.weight > 0:
            skipped.append((backend.id, "degraded" if degraded and availability.full else _why(availability)))
        if not availability.usable:
            unusable.append((backend.id, _why(availability)))
            continue
        entries.append(_Entry(backend, weighted.weight, availability, degraded, weighted.upstream_model))

    if not entries:
        detail = ", ".join(f"{b}: {why}" for b, why in unusable) or "all disabled"
        raise ApiError(
            "NO_BACKEND_AVAILABLE", _ascii(f"No backend is available for '{policy.model}' ({detail}).", 500)
        )
    ordered: list[_Entry] = []
    for degraded in (False, True):
        tier = [e for e in entries if e.degraded == degraded]
        drawn = [e for e in tier if e.weight > 0]
        ordered += weighted_order(drawn, [e.effective for e in drawn], rng)
        ordered += [e for e in tier if e.weight == 0]

    first = ordered[0]
    reason: RouteReason
    if skipped or first.weight == 0:
        reason = "FAILOVER"
    elif override is not None:
        reason = "OVERRIDE"
    else:
        reason = "PRIMARY"
    candidates = tuple(
        Candidate(e.backend, e.upstream_model or backend_model(policy, e.backend), e.effective, e.degraded)
        for e in ordered
    )
    return RouteDecision(policy, candidates, reason, _warning(skipped, candidates[0]), tuple(skipped))


def weighted_order(items: Sequence[T], weights: Sequence[float], rng: random.Random) -> list[T]:
    """``items`` in weighted random order without replacement (successive weighted draws)."""
    pool = [(item, max(weight, 0.0)) for item, weight in zip(items, weights, strict=True)]
    ordered: list[T] = []
    while pool:
        total = sum(weight for _, weight in pool)
        if total <= 0:
            ordered += [item for item, _ in pool]  # nothing left to weigh: keep configuration order
            break
        point = rng.random() * total
        chosen = len(pool) - 1  # float rounding can leave the point just past the last bound
        for index, (_, weight) in enumerate(pool):
            if point < weight:
                chosen = index
                break
            point -= weight
        ordered.append(pool.pop(chosen)[0])
    return ordered


def backend_model(policy: ModelPolicy, backend: BackendConfig) -> str:
    """The policy's model when the backend lists it (or lists nothing), else the backend's first."""
    served = backend.models
    return policy.model if not served or policy.model in served else served[0]


def _check_key(policy: ModelPolicy, key_id: str) -> None:
    if key_id in policy.deny_keys:
        raise ApiError("FORBIDDEN", f"This API key is denied access to the model '{policy.model}'.")
    if policy.allow_keys is not None and key_id not in policy.allow_keys:
        raise ApiError("FORBIDDEN", f"This API key is not on the allow list of the model '{policy.model}'.")


def _unique(listed: Sequence[WeightedBackend]) -> list[WeightedBackend]:
    """A backend listed twice counts once, at its first entry."""
    seen: set[str] = set()
    unique = []
    for weighted in listed:
        if weighted.backend_id not in seen:
            seen.add(weighted.backend_id)
            unique.append(weighted)
    return unique


def _why(availability: Availability) -> str:
    return _WHY[availability.reason] if availability.reason is not None else "unavailable"


def _warning(skipped: Sequence[tuple[str, str]], served: Candidate) -> str | None:
    """Why routing deviated from the policy's normal choice, for ``X-Routing-Warning``."""
    notes = [f"{b} skipped ({why})" for b, why in skipped if b != served.backend.id]
    if served.degraded:
        notes.append(f"served by degraded backend {served.backend.id}")
    return _ascii("; ".join(notes), MAX_WARNING_CHARS) if notes else None


def _ascii(text: str, limit: int) -> str:
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."
