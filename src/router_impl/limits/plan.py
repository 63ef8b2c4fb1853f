"""The admission plan builder: a request's demand and its organisation's limits -> an ``AdmitPlan``.

Pure (no store, no clock: the instant and the lease id come in). For each request:

- request buckets, per organisation and per key: capacity ``burst`` (default the per-minute rate),
  refilled continuously at ``requests_per_minute``; each request takes 1;
- token buckets (TPM), per organisation and per key: each request takes its estimate (prompt
  estimate + completion reserve, at most the bucket's capacity, so a large request is slowed, never
  refused for ever);
- budget counters of the current UTC day and month, in tokens and in integer micro-dollars: each
  request reserves its worst case (prompt upper bound + ``max_tokens``, capped).

``adjustments`` is the other half: what settling (actual figures) or refunding (zero) changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from router_impl.config.model import ModelPricing, OrgLimits, RateLimitConfig
from router_impl.limits import store_keys
from router_impl.limits.budgets import PERIODS, UNITS, Budgets
from router_impl.limits.periods import PeriodWindow, to_ms, window
from router_impl.limits.store import (
    AdmitPlan,
    BucketAdjust,
    BucketKind,
    BucketOwner,
    BucketSpec,
    CounterAdjust,
    CounterSpec,
    Lease,
    Period,
    Unit,
)
from router_impl.usage.cost import cost_micro_usd


@dataclass(frozen=True)
class Demand:
    organization_id: str
    key_id: str
    prompt_tokens: int  # estimate: what token buckets take
    max_tokens: int | None  # as the client asked (None: not set)
    pricing: ModelPricing
    choices: int = 1  # n: each choice may use max_tokens
    stream: bool = False  # streamed: held under the longer stream lease
    completes: bool = True  # False (embeddings): no completion tokens, none reserved, no max_tokens
    # An upper bound of the prompt tokens the backend can count (usage/tokens.py prompt_bound): what
    # budgets reserve, so that concurrent requests cannot overshoot them. None: prompt_tokens.
    prompt_bound: int | None = None


class PlannedAdmit(NamedTuple):
    """An ``AdmitPlan`` and what the service needs to answer its decision (a tuple: built per request)."""

    plan: AdmitPlan
    windows: dict[Period, PeriodWindow]
    reserved_tokens: int  # prompt bound + completion reserve, as the budget counters take it
    reserved_micro_usd: int
    sent_max: int | None  # the max_tokens the backend gets (capped); None: not set

    @property
    def buckets(self) -> tuple[BucketSpec, ...]:
        return self.plan.buckets

    @property
    def counters(self) -> tuple[CounterSpec, ...]:
        return self.plan.counters


# (kind, capacity, per_ms): a plain tuple, built per request.
BucketShape = tuple[BucketKind, float, float]


def plan_admit(
    demand: Demand,
    limits: OrgLimits,
    budgets: Budgets | None,
    moment: datetime,
    *,
    lease_id: str,
    lease_ms: int,
    default_max_tokens_cap: int,
) -> PlannedAdmit:
    """The plan of one request at ``moment``; its lease lapses ``lease_ms`` later."""
    now_ms = to_ms(moment)
    # With budgets, max_tokens is capped (default cap unless the organisation sets one), so the
    # reservation is a true worst case; an explicit cap applies with or without budgets.
    cap = limits.max_tokens_cap or (default_max_tokens_cap if budgets is not None else None)
    sent_max = demand.max_tokens if cap is None else min(demand.max_tokens or cap, cap)
    if not demand.completes:
        sent_max = None
    reserve_completion = (sent_max or 0) * demand.choices
    estimate = demand.prompt_tokens + reserve_completion
    prompt_worst = max(demand.prompt_tokens, demand.prompt_bound or 0)
    worst = prompt_worst + reserve_completion
    worst_micro = cost_micro_usd(demand.pricing, prompt_worst, reserve_completion)

    org_id = demand.organization_id
    windows = {p: window(p, moment) for p in PERIODS}
    lease = Lease(
        store_keys.lease_key(org_id), store_keys.lease_held_key(org_id), lease_id, now_ms + lease_ms
    )
    plan = AdmitPlan(
        store_keys.lockout_key(org_id),
        buckets(org_id, demand.key_id, limits, estimate),
        counters(org_id, budgets, windows, worst, worst_micro),
        now_ms,
        lease,
    )
    return PlannedAdmit(plan, windows, worst, worst_micro, sent_max)


def bucket_shapes(rates: RateLimitConfig | None) -> list[BucketShape]:
    """The buckets a rate-limit config defines."""
    if rates is None:
        return []
    shapes: list[BucketShape] = []
    if rates.requests_per_minute is not None:
        capacity = rates.burst or rates.requests_per_minute
        shapes.append(("requests", float(capacity), rates.requests_per_minute / 60_000))
    if rates.tokens_per_minute is not None:
        per_ms = rates.tokens_per_minute / 60_000
        shapes.append(("tokens", float(rates.tokens_per_minute), per_ms))
    return shapes


def buckets(org_id: str, key_id: str, limits: OrgLimits, estimate: int) -> tuple[BucketSpec, ...]:
    """The organisation's buckets, then the key's; a request costs 1, tokens cost the estimate."""
    specs: list[BucketSpec] = []
    owners: list[tuple[BucketOwner, str | None, RateLimitConfig | None]] = [
        ("org", None, limits.rate_limits),
        ("key", key_id, limits.key_rate_limits),
    ]
    for owner, kid, rates in owners:
        for kind, capacity, per_ms in bucket_shapes(rates):
            cost = 1.0 if kind == "requests" else min(float(estimate), capacity)
            specs.append(
                BucketSpec(
                    store_keys.bucket_key(org_id, owner, kid, kind), capacity, per_ms, cost, owner, kind
                )
            )
    return tuple(specs)


def counters(
    org_id: str, budgets: Budgets | None, windows: dict[Period, PeriodWindow], tokens: int, micro: int
) -> tuple[CounterSpec, ...]:
    """One counter per configured budget (period x unit), reserving ``tokens`` or ``micro``."""
    if budgets is None:
        return ()
    specs: list[CounterSpec] = []
    for period in PERIODS:
        span = windows[period]
        for unit in UNITS:
            limit = budgets.of(period, unit)
            if limit is not None:
                key = store_keys.counter_key(org_id, span, unit)
                amount = tokens if unit == "tokens" else micro
                specs.append(CounterSpec(key, limit, amount, span.ends_at_ms, period, unit))
    return tuple(specs)


def adjustments(
    token_buckets: tuple[BucketSpec, ...],
    counters: tuple[CounterSpec, ...],
    reserved_tokens: int,
    reserved_micro_usd: int,
    tokens: int,
    micro_usd: int,
) -> tuple[tuple[BucketAdjust, ...], tuple[CounterAdjust, ...]]:
    """What settling with the actual ``tokens`` / ``micro_usd`` changes (a refund settles at 0):
    token buckets get back their estimate less the actual, counters move to the actual figures."""
    bucket_changes = tuple(
        BucketAdjust(b.key, b.capacity, b.per_ms, b.cost - min(float(tokens), b.capacity), b.cost)
        for b in token_buckets
    )
    counter_changes = tuple(
        CounterAdjust(
            c.key,
            (tokens - reserved_tokens) if c.unit == "tokens" else (micro_usd - reserved_micro_usd),
            c.expires_at_ms,
            c.amount,
        )
        for c in counters
    )
    return bucket_changes, counter_changes


@dataclass(frozen=True)
class BudgetView:
    period: Period
    tokens_remaining: int | None
    micro_usd_remaining: int | None


def tightest(counters: tuple[CounterSpec, ...], used: tuple[int, ...]) -> BudgetView | None:
    """The period with the least room left (by fraction), for the usage record's budget snapshot."""
    best: tuple[float, Period] | None = None
    remaining: dict[tuple[Period, Unit], int] = {}
    for counter, now_used in zip(counters, used, strict=True):
        left = max(0, counter.limit - now_used)
        remaining[(counter.period, counter.unit)] = left
        fraction = left / counter.limit if counter.limit else 0.0
        if best is None or fraction < best[0]:
            best = (fraction, counter.period)
    if best is None:
        return None
    period = best[1]
    return BudgetView(period, remaining.get((period, "tokens")), remaining.get((period, "micro_usd")))
