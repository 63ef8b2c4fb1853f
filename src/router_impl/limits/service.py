"""Rate limits and budgets (FR-4, FR-5): the domain decision, transport-free.

For each request the service builds one ``AdmitPlan`` from the organisation's limits and runs it on
the limit store in one atomic step (one Redis round trip when shared):

- request buckets, per organisation and per key: capacity ``burst`` (default the per-minute rate),
  refilled continuously at ``requests_per_minute``; each request takes 1;
- token buckets (TPM), per organisation and per key: each request takes its estimate (prompt
  estimate + completion reserve, at most the bucket's capacity, so a large request is slowed, never
  refused for ever); ``settle`` corrects the charge with the actual tokens;
- budget counters of the current UTC day and month, in tokens and in integer micro-dollars: each
  request reserves its worst case (prompt upper bound + ``max_tokens``, capped); ``settle`` moves the
  reservation to the actual figures, ``refund`` gives it back after a failure.

Each admitted reservation is leased (``store.Lease``) for ``lease_seconds`` (the request timeout plus a
margin), a stream's for ``stream_lease_seconds``: a stream is bounded only by its backend's read
timeout, so no lease covers every stream; one that outlives its lease has its reservation given back by
the next admit of the organisation and is charged in full when it settles, so the totals stay right
and only the budget's hold on that stream lapses early. A router killed mid-request never settles:
its leases lapse and the organisation's next admits give the reservations back.

A refusal is a ``LimitDenied`` (429 ``RATE_LIMIT_EXCEEDED`` with ``Retry-After`` from the refill
rate, or 402 ``BUDGET_EXCEEDED`` with the period's remaining tokens and currency); nothing was
taken. Budgets come from the runtime config, else from the external budget service when one is
configured. When the shared store (Redis) fails, an organisation's ``failure_mode`` decides:
``fail_open`` enforces with this process's own store (and the readiness check warns),
``fail_closed`` answers 503. The shared store is tried again after ``retry_shared_seconds``, so
recovery is automatic and a dead Redis costs one timeout per interval, not one per request.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

import structlog

from router_impl.config.model import ModelPricing, OrgLimits, RateLimitConfig, RuntimeConfig
from router_impl.errors import ApiError
from router_impl.health import CheckStatus
from router_impl.limits.budget_fit import max_tokens_that_fit, too_large_message
from router_impl.limits.periods import PeriodWindow, to_ms, window
from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    BucketSpec,
    CounterAdjust,
    CounterRefused,
    CounterSpec,
    Lease,
    LimitStore,
    LimitStoreUnavailable,
    LockedOut,
    Period,
    Scope,
    Unit,
)
from router_impl.usage.cost import cost_micro_usd, micro_to_usd

T = TypeVar("T")
LimitState = Literal["RATE_LIMITED", "BUDGET_EXCEEDED"]
ResetScope = Literal["buckets", "budget", "all"]
_PERIODS: tuple[Period, ...] = ("DAILY", "MONTHLY")
_MICRO = Decimal(1_000_000)

log = structlog.get_logger("router.limits")


class LimitDenied(ApiError):
    """A request refused by a rate limit or a budget; ``limit_state`` goes to usage and audit."""

    def __init__(
        self, code: str, message: str, *, limit_state: LimitState, scope: str, **kwargs: Any
    ) -> None:
        super().__init__(code, message, **kwargs)
        self.limit_state = limit_state
        self.scope = scope


@dataclass(frozen=True)
class Budgets:
    """Budget amounts of one organisation; None means no budget of that kind."""

    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_micro_usd: int | None = None
    monthly_micro_usd: int | None = None

    def of(self, period: Period, unit: Unit) -> int | None:
        if period == "DAILY":
            return self.daily_tokens if unit == "tokens" else self.daily_micro_usd
        return self.monthly_tokens if unit == "tokens" else self.monthly_micro_usd

    @property
    def empty(self) -> bool:
        return all(self.of(p, u) is None for p in _PERIODS for u in ("tokens", "micro_usd"))


class BudgetSource(Protocol):
    """The external budget service (cached); raises when it cannot answer."""

    async def budgets(self, org_id: str) -> Any: ...


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


@dataclass(frozen=True)
class BudgetView:
    period: Period
    tokens_remaining: int | None
    micro_usd_remaining: int | None


@dataclass(frozen=True)
class Ticket:
    """What an admitted request holds until it settles or is refunded."""

    organization_id: str
    shared: bool  # admitted by the shared store (settle there too)
    token_buckets: tuple[BucketSpec, ...]
    counters: tuple[CounterSpec, ...]
    reserved_tokens: int  # prompt bound + completion reserve, as the budget counters took it
    reserved_micro_usd: int
    max_tokens: int | None  # send this max_tokens to the backend (clamped); None: leave the body alone
    headers: dict[str, str] = field(default_factory=dict)
    budget: BudgetView | None = None  # the tightest period after the reservation, for the usage record
    lease: Lease | None = None  # ended by settle or refund


@dataclass(frozen=True)
class BudgetState:
    period: Period
    tokens_used: int
    tokens_limit: int | None
    micro_usd_used: int
    micro_usd_limit: int | None
    reset_at: datetime


@dataclass(frozen=True)
class OrgState:
    requests_remaining: int | None
    tokens_remaining: int | None
    budgets: tuple[BudgetState, ...]
    lockout_until: datetime | None


class LimitsService:
    def __init__(
        self,
        *,
        config: Callable[[], RuntimeConfig],
        local: LimitStore,
        shared: LimitStore | None = None,
        budget_service: BudgetSource | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        default_max_tokens_cap: int = 4096,
        retry_shared_seconds: float = 1.0,
        on_denied: Callable[[LimitDenied, Period | None], None] | None = None,
        lease_seconds: float = 150.0,
        stream_lease_seconds: float = 900.0,
        lease_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.config = config
        self.local = local
        self.shared = shared
        self.budget_service = budget_service
        self.now = now
        self.monotonic = monotonic
        self.default_max_tokens_cap = default_max_tokens_cap
        self.retry_shared_seconds = retry_shared_seconds
        self.on_denied = on_denied  # each refusal and its budget period (metrics)
        self.lease_ms = math.ceil(lease_seconds * 1000)
        self.stream_lease_ms = max(self.lease_ms, math.ceil(stream_lease_seconds * 1000))
        self.lease_id = lease_id
        self._shared_down_until = 0.0
        self._shared_down_reason: str | None = None

    # ------------------------------------------------------------------ admission

    def limits_of(self, org_id: str) -> OrgLimits | None:
        return self.config().org_limits.get(org_id)

    async def admit(self, demand: Demand) -> Ticket | None:
        """Take from every bucket and reserve on every budget, or raise ``LimitDenied``; None when
        no limit applies to the organisation (nothing to settle)."""
        limits = self.limits_of(demand.organization_id)
        budgets = await self._budgets(demand.organization_id, limits)
        if limits is None and budgets is None:
            return None
        limits = limits or OrgLimits()
        moment = self.now()
        now_ms = to_ms(moment)
        # With budgets, max_tokens is capped (default cap unless the organisation sets one), so the
        # reservation is a true worst case; an explicit cap applies with or without budgets.
        cap = limits.max_tokens_cap or (self.default_max_tokens_cap if budgets is not None else None)
        sent_max = demand.max_tokens if cap is None else min(demand.max_tokens or cap, cap)
        if not demand.completes:
            sent_max = None
        reserve_completion = (sent_max or 0) * demand.choices
        estimate = demand.prompt_tokens + reserve_completion
        prompt_worst = max(demand.prompt_tokens, demand.prompt_bound or 0)
        worst = prompt_worst + reserve_completion
        worst_micro = cost_micro_usd(demand.pricing, prompt_worst, reserve_completion)

        buckets = _buckets(demand.organization_id, demand.key_id, limits, estimate)
        windows = {p: window(p, moment) for p in _PERIODS}
        counters = _counters(demand.organization_id, budgets, windows, worst, worst_micro)
        lease = Lease(
            _lease_key(demand.organization_id),
            _lease_held_key(demand.organization_id),
            self.lease_id(),
            now_ms + (self.stream_lease_ms if demand.stream else self.lease_ms),
        )
        plan = AdmitPlan(_lockout_key(demand.organization_id), buckets, counters, now_ms, lease)

        decision, shared = await self._on_store(limits, lambda store: store.admit(plan))
        if isinstance(decision, Admitted):
            return Ticket(
                organization_id=demand.organization_id,
                shared=shared,
                token_buckets=tuple(b for b in buckets if b.kind == "tokens"),
                counters=counters,
                reserved_tokens=worst,
                reserved_micro_usd=worst_micro,
                max_tokens=sent_max if sent_max != demand.max_tokens else None,
                headers=_rate_headers(buckets, decision.levels),
                budget=_tightest(counters, decision.used),
                lease=lease,
            )
        if isinstance(decision, BucketRefused):
            raise self._denied(self._rate_limited(buckets[decision.index], decision.level), None)
        store = self.shared if shared and self.shared is not None else self.local
        if isinstance(decision, CounterRefused):
            refused = counters[decision.index]
            exhausted = await self._budget_exhausted(
                store, demand.organization_id, refused.period, budgets, windows, now_ms
            )
            if decision.used < refused.limit:  # room left: only this request is refused
                left = refused.limit - decision.used
                fits = max_tokens_that_fit(
                    refused.unit, left, demand.prompt_tokens, demand.choices, demand.pricing
                )
                exhausted.message = too_large_message(refused.period, refused.unit, left, fits)
            raise self._denied(exhausted, refused.period)
        assert isinstance(decision, LockedOut)
        exhausted = await self._budget_exhausted(
            store,
            demand.organization_id,
            decision.period,
            budgets,
            windows,
            now_ms,
            locked_until=decision.until_ms,
        )
        raise self._denied(exhausted, decision.period)

    def _denied(self, denied: LimitDenied, period: Period | None) -> LimitDenied:
        if self.on_denied is not None:
            self.on_denied(denied, period)
        return denied

    async def settle(self, ticket: Ticket, tokens: int, micro_usd: int) -> None:
        """Correct the token buckets and move the budget reservation to the actual figures."""
        await self._adjust(ticket, tokens, micro_usd)

    async def refund(self, ticket: Ticket) -> None:
        """The call failed: give back the token estimate and the budget reservation."""
        await self._adjust(ticket, 0, 0)

    async def _adjust(self, ticket: Ticket, tokens: int, micro_usd: int) -> None:
        buckets = tuple(
            BucketAdjust(b.key, b.capacity, b.per_ms, b.cost - min(float(tokens), b.capacity), b.cost)
            for b in ticket.token_buckets
        )
        counters = tuple(
            CounterAdjust(
                c.key,
                (tokens - ticket.reserved_tokens)
                if c.unit == "tokens"
                else (micro_usd - ticket.reserved_micro_usd),
                c.expires_at_ms,
                c.amount,
            )
            for c in ticket.counters
        )
        if not buckets and not counters:
            return
        store = self.shared if ticket.shared and self.shared is not None else self.local
        try:
            await store.adjust(buckets, counters, to_ms(self.now()), ticket.lease)
        except LimitStoreUnavailable as exc:
            # The reservation stays as it was: conservative (never under-counts a budget).
            log.error("limits_settle_failed", organization_id=ticket.organization_id, error=str(exc)[:200])

    # ------------------------------------------------------------------ denials

    def _rate_limited(self, bucket: BucketSpec, level: float) -> LimitDenied:
        retry_after = max(1, math.ceil((bucket.cost - level) / bucket.per_ms / 1000))
        reset = max(0, math.ceil((bucket.capacity - level) / bucket.per_ms / 1000))
        remaining = max(0, math.floor(level))
        what = "request" if bucket.kind == "requests" else "token"
        owner = "organisation" if bucket.scope == "org" else "API key"
        headers: dict[str, str] = {}
        if bucket.kind == "requests":
            headers = {
                "RateLimit-Limit": str(int(bucket.capacity)),
                "RateLimit-Remaining": str(remaining),
                "RateLimit-Reset": str(min(reset, 2_678_400)),
            }
        return LimitDenied(
            "RATE_LIMIT_EXCEEDED",
            f"The {owner}'s {what} rate limit is exhausted; retry after {retry_after} s.",
            limit_state="RATE_LIMITED",
            scope=bucket.scope,
            retry_after_seconds=min(retry_after, 2_678_400),
            limit_context={
                "scope": bucket.scope,
                "limit": int(bucket.capacity),
                "remaining": remaining,
                "reset_seconds": min(reset, 2_678_400),
            },
            headers=headers,
        )

    async def _budget_exhausted(
        self,
        store: LimitStore,
        org_id: str,
        period: Period,
        budgets: Budgets | None,
        windows: dict[Period, PeriodWindow],
        now_ms: int,
        *,
        locked_until: int | None = None,
    ) -> LimitDenied:
        span = windows[period]
        reset_ms = locked_until if locked_until is not None else span.ends_at_ms
        context: dict[str, Any] = {
            "period": period,
            "reset_at": _iso(datetime.fromtimestamp(reset_ms / 1000, UTC)),
        }
        if budgets is not None:
            keys = tuple(_counter_key(org_id, span, unit) for unit in ("tokens", "micro_usd"))
            tokens_used: int | None = None
            micro_used: int | None = None
            try:
                seen = await store.snapshot((), keys, _lockout_key(org_id), now_ms)
                tokens_used, micro_used = seen.used
            except LimitStoreUnavailable:
                pass  # the context then omits the figures
            token_limit, micro_limit = budgets.of(period, "tokens"), budgets.of(period, "micro_usd")
            if token_limit is not None and tokens_used is not None:
                context["tokens_remaining"] = max(0, token_limit - tokens_used)
            if micro_limit is not None and micro_used is not None:
                context["currency_remaining"] = micro_to_usd(max(0, micro_limit - micro_used))
        retry_after = max(1, math.ceil((reset_ms - now_ms) / 1000))
        label = "daily" if period == "DAILY" else "monthly"
        return LimitDenied(
            "BUDGET_EXCEEDED",
            f"The organisation's {label} budget is exhausted until {context['reset_at']}.",
            limit_state="BUDGET_EXCEEDED",
            scope="org",
            retry_after_seconds=min(retry_after, 2_678_400),
            limit_context=context,
        )

    # ------------------------------------------------------------------ stores

    async def _on_store(self, limits: OrgLimits, op: Callable[[LimitStore], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``op`` on the shared store, or by the organisation's failure mode when it is down."""
        shared = self.shared
        if shared is not None and self.monotonic() >= self._shared_down_until:
            try:
                result = await op(shared)
            except LimitStoreUnavailable as exc:
                self._shared_failed(exc)
            else:
                if self._shared_down_reason is not None:
                    log.info("limits_store_recovered")
                    self._shared_down_reason = None
                return result, True
        if shared is not None and limits.failure_mode == "fail_closed":
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "The rate-limit store is unavailable; retry later.",
                headers={"Retry-After": "1"},
            )
        try:
            return await op(self.local), False
        except LimitStoreUnavailable as exc:  # the in-process store is full of live entries
            log.error("limits_local_store_full", error=str(exc)[:200])
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Rate limiting is saturated; retry later.",
                headers={"Retry-After": "1"},
            ) from exc

    def _shared_failed(self, exc: Exception) -> None:
        self._shared_down_until = self.monotonic() + self.retry_shared_seconds
        if self._shared_down_reason is None:
            log.error("limits_store_unavailable", error=str(exc)[:200])
        self._shared_down_reason = type(exc).__name__

    @property
    def degraded(self) -> str | None:
        """Why limits are not being enforced through the shared store, or None."""
        if self._shared_down_reason is None:
            return None
        return "shared limit store unreachable; fail_open organisations use per-process limits"

    async def readiness(self) -> tuple[CheckStatus, str]:
        if self.shared is None:
            return "pass", "per-process limits (embedded)"
        reason = self.degraded
        return ("warn", reason) if reason else ("pass", "shared limit store reachable")

    async def _budgets(self, org_id: str, limits: OrgLimits | None) -> Budgets | None:
        if limits is not None and limits.budgets is not None and not limits.budgets.empty:
            b = limits.budgets
            return Budgets(b.daily_tokens, b.monthly_tokens, _micro(b.daily_usd), _micro(b.monthly_usd))
        if self.budget_service is None:
            return None
        try:
            external = await self.budget_service.budgets(org_id)
        except Exception as exc:  # the client raises its own "unavailable" error; any failure counts
            if limits is not None and limits.failure_mode == "fail_closed":
                raise ApiError(
                    "SERVICE_UNAVAILABLE",
                    "The budget service is unavailable; retry later.",
                    headers={"Retry-After": "1"},
                ) from exc
            log.warning("budget_service_unavailable", organization_id=org_id, error=type(exc).__name__)
            return None
        if external is None:
            return None
        found = Budgets(
            external.daily_tokens,
            external.monthly_tokens,
            external.daily_micro_usd,
            external.monthly_micro_usd,
        )
        return None if found.empty else found

    # ------------------------------------------------------------------ admin

    async def state(self, org_id: str) -> OrgState:
        limits = self.limits_of(org_id) or OrgLimits()
        budgets = await self._budgets(org_id, limits)
        moment = self.now()
        now_ms = to_ms(moment)
        shapes = _bucket_shapes(limits.rate_limits)
        probes = tuple(
            BucketProbe(_bucket_key(org_id, "org", None, kind), cap, per_ms) for kind, cap, per_ms in shapes
        )
        windows = [window(p, moment) for p in _PERIODS]
        keys = tuple(_counter_key(org_id, w, unit) for w in windows for unit in ("tokens", "micro_usd"))
        seen, _ = await self._on_store(
            limits, lambda store: store.snapshot(probes, keys, _lockout_key(org_id), now_ms)
        )
        levels = dict(zip((kind for kind, _, _ in shapes), seen.levels, strict=True))
        states = []
        for i, w in enumerate(windows):
            tokens_used, micro_used = seen.used[2 * i], seen.used[2 * i + 1]
            token_limit = budgets.of(w.period, "tokens") if budgets else None
            micro_limit = budgets.of(w.period, "micro_usd") if budgets else None
            if token_limit is None and micro_limit is None and not tokens_used and not micro_used:
                continue
            states.append(BudgetState(w.period, tokens_used, token_limit, micro_used, micro_limit, w.ends_at))
        lockout = seen.lockout
        return OrgState(
            requests_remaining=_floor(levels.get("requests")),
            tokens_remaining=_floor(levels.get("tokens")),
            budgets=tuple(states),
            lockout_until=datetime.fromtimestamp(lockout.until_ms / 1000, UTC) if lockout else None,
        )

    async def reset(self, org_id: str, scope: ResetScope, key_id: str | None) -> tuple[str, ...]:
        """Clear buckets (the organisation's and its keys', or one key's), the lockout and/or the
        current periods' budget usage. Returns what was cleared, by name."""
        limits = self.limits_of(org_id) or OrgLimits()
        names: dict[str, str] = {}
        moment = self.now()
        if scope in ("buckets", "all"):
            owners: list[tuple[Scope, str | None]] = [("key", key_id)] if key_id else [("org", None)]
            for owner, kid in owners:
                for kind in ("requests", "tokens"):
                    names[_bucket_key(org_id, owner, kid, kind)] = (
                        f"{owner}_bucket" + (f":{kid}" if kid else "") + f":{kind}"
                    )
        if scope in ("budget", "all"):
            for period in _PERIODS:
                w = window(period, moment)
                for unit in ("tokens", "micro_usd"):
                    names[_counter_key(org_id, w, unit)] = f"{period.lower()}_budget:{unit}"
        if key_id is None:
            names[_lockout_key(org_id)] = "lockout"
        prefixes = (_key_bucket_prefix(org_id),) if key_id is None and scope in ("buckets", "all") else ()

        async def clear(store: LimitStore) -> tuple[str, ...]:
            cleared = list(await store.clear(tuple(names)))
            for prefix in prefixes:
                cleared.extend(await store.clear_prefix(prefix))
            return tuple(cleared)

        cleared, shared = await self._on_store(limits, clear)
        if shared:  # whatever this process counted locally during an outage goes too
            await self.local.clear(tuple(names))
            for prefix in prefixes:
                await self.local.clear_prefix(prefix)
        return tuple(dict.fromkeys(names.get(k) or _key_bucket_name(k) for k in cleared))

    async def limits_changed(self, org_id: str) -> None:
        """New limits lift a lockout set under the old ones."""
        limits = self.limits_of(org_id) or OrgLimits()
        try:
            await self._on_store(limits, lambda store: store.clear((_lockout_key(org_id),)))
        except ApiError:
            log.warning("limits_lockout_not_cleared", organization_id=org_id)


# ---------------------------------------------------------------------- plan building


def _bucket_key(org_id: str, scope: Scope, key_id: str | None, kind: str) -> str:
    owner = "org" if scope == "org" else f"key:{key_id}"
    return f"rl:{{{org_id}}}:{owner}:{kind}"


def _key_bucket_prefix(org_id: str) -> str:
    return f"rl:{{{org_id}}}:key:"


def _key_bucket_name(store_key: str) -> str:
    """``rl:{org}:key:<id>:<kind>`` -> ``key_bucket:<id>:<kind>``."""
    _, _, rest = store_key.partition(":key:")
    return f"key_bucket:{rest}"


def _lockout_key(org_id: str) -> str:
    return f"lockout:{{{org_id}}}"


def _lease_key(org_id: str) -> str:
    return f"lease:{{{org_id}}}"


def _lease_held_key(org_id: str) -> str:
    return f"lease:{{{org_id}}}:held"


def _counter_key(org_id: str, span: PeriodWindow, unit: Unit) -> str:
    return f"budget:{{{org_id}}}:{span.period}:{span.label}:{unit}"


def _bucket_shapes(rates: RateLimitConfig | None) -> list[tuple[str, float, float]]:
    """(kind, capacity, per_ms) of each bucket a rate-limit config defines."""
    if rates is None:
        return []
    shapes: list[tuple[str, float, float]] = []
    if rates.requests_per_minute is not None:
        capacity = rates.burst or rates.requests_per_minute
        shapes.append(("requests", float(capacity), rates.requests_per_minute / 60_000))
    if rates.tokens_per_minute is not None:
        shapes.append(("tokens", float(rates.tokens_per_minute), rates.tokens_per_minute / 60_000))
    return shapes


def _buckets(org_id: str, key_id: str, limits: OrgLimits, estimate: int) -> tuple[BucketSpec, ...]:
    specs: list[BucketSpec] = []
    owners: list[tuple[Scope, str | None, RateLimitConfig | None]] = [
        ("org", None, limits.rate_limits),
        ("key", key_id, limits.key_rate_limits),
    ]
    for scope, kid, rates in owners:
        for kind, capacity, per_ms in _bucket_shapes(rates):
            cost = 1.0 if kind == "requests" else min(float(estimate), capacity)
            specs.append(
                BucketSpec(_bucket_key(org_id, scope, kid, kind), capacity, per_ms, cost, scope, kind)  # type: ignore[arg-type]
            )
    return tuple(specs)


def _counters(
    org_id: str, budgets: Budgets | None, windows: dict[Period, PeriodWindow], tokens: int, micro: int
) -> tuple[CounterSpec, ...]:
    if budgets is None:
        return ()
    specs: list[CounterSpec] = []
    for period in _PERIODS:
        span = windows[period]
        for unit, amount in (("tokens", tokens), ("micro_usd", micro)):
            limit = budgets.of(period, unit)  # type: ignore[arg-type]
            if limit is not None:
                key = _counter_key(org_id, span, unit)  # type: ignore[arg-type]
                specs.append(CounterSpec(key, limit, amount, span.ends_at_ms, period, unit))  # type: ignore[arg-type]
    return tuple(specs)


def _rate_headers(buckets: tuple[BucketSpec, ...], levels: tuple[float, ...]) -> dict[str, str]:
    """RateLimit-* of the tightest request bucket (the one with the fewest requests left)."""
    tightest: tuple[float, BucketSpec] | None = None
    for bucket, level in zip(buckets, levels, strict=True):
        if bucket.kind == "requests" and (tightest is None or level < tightest[0]):
            tightest = (level, bucket)
    if tightest is None:
        return {}
    level, bucket = tightest
    reset = max(0, math.ceil((bucket.capacity - level) / bucket.per_ms / 1000))
    return {
        "RateLimit-Limit": str(int(bucket.capacity)),
        "RateLimit-Remaining": str(max(0, math.floor(level))),
        "RateLimit-Reset": str(min(reset, 2_678_400)),
    }


def _tightest(counters: tuple[CounterSpec, ...], used: tuple[int, ...]) -> BudgetView | None:
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


def _micro(usd: Decimal | None) -> int | None:
    return None if usd is None else int(usd * _MICRO)


def _floor(level: float | None) -> int | None:
    return None if level is None else max(0, math.floor(level))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
