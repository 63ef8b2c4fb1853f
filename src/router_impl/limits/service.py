"""The limits service (FR-4, FR-5): admit, settle and refund one request, transport-free.

For each request ``admit`` builds one ``AdmitPlan`` (``plan.py``) from the organisation's limits and
budgets (``budgets.py``) and runs it on the limit store in one atomic step (one Redis round trip when
shared), through the shared-to-local failover (``failover.py``). ``settle`` corrects the token
buckets with the actual tokens and moves the budget reservation to the actual figures; ``refund``
gives it back after a failure.

Each admitted reservation is leased (``store.Lease``) for ``lease_seconds`` (the request timeout plus a
margin), a stream's for ``stream_lease_seconds``: a stream is bounded only by its backend's read
timeout, so no lease covers every stream; one that outlives its lease has its reservation given back by
the next admit of the organisation and is charged in full when it settles, so the totals stay right
and only the budget's hold on that stream lapses early. A router killed mid-request never settles:
its leases lapse and the organisation's next admits give the reservations back.

A refusal is a ``LimitDenied`` (``denials.py``); nothing was taken. Admin state and reset live in
``state.py``; the service hands them through so one object stands for the organisation's limits.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from router_impl.config.model import OrgLimits, RuntimeConfig
from router_impl.limits import store_keys
from router_impl.limits.budget_fit import max_tokens_that_fit, too_large_message
from router_impl.limits.budgets import UNITS, BudgetLookup, Budgets, BudgetSource
from router_impl.limits.denials import LimitDenied, admitted_headers, budget_exhausted, rate_limited
from router_impl.limits.failover import FailoverLimitStore
from router_impl.limits.periods import PeriodWindow, to_ms
from router_impl.limits.plan import BudgetView, Demand, PlannedAdmit, adjustments, plan_admit, tightest
from router_impl.limits.state import LimitsAdmin, OrgState, ResetTarget
from router_impl.limits.store import (
    Admitted,
    BucketRefused,
    BucketSpec,
    CounterRefused,
    CounterSpec,
    Lease,
    LimitStore,
    LimitStoreUnavailable,
    LockedOut,
    Period,
)
from router_impl.process_health import CheckStatus

__all__ = ["Demand", "LimitDenied", "LimitsService", "Ticket"]

log = structlog.get_logger("router.limits")


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
        self.stores = FailoverLimitStore.over(
            local, shared, monotonic=monotonic, retry_seconds=retry_shared_seconds
        )
        self.budgets = BudgetLookup(budget_service)
        self.admin = LimitsAdmin(config=config, stores=self.stores, budgets=self.budgets, now=now)
        self.now = now
        self.default_max_tokens_cap = default_max_tokens_cap
        self.on_denied = on_denied  # each refusal and its budget period (metrics)
        self.lease_ms = math.ceil(lease_seconds * 1000)
        self.stream_lease_ms = max(self.lease_ms, math.ceil(stream_lease_seconds * 1000))
        self.lease_id = lease_id

    def limits_of(self, org_id: str) -> OrgLimits | None:
        return self.config().org_limits.get(org_id)

    # ------------------------------------------------------------------ admission

    async def admit(self, demand: Demand) -> Ticket | None:
        """Take from every bucket and reserve on every budget, or raise ``LimitDenied``; None when
        no limit applies to the organisation (nothing to settle)."""
        limits = self.limits_of(demand.organization_id)
        budgets = await self.budgets.budgets(demand.organization_id, limits)
        if limits is None and budgets is None:
            return None
        limits = limits or OrgLimits()
        planned = plan_admit(
            demand,
            limits,
            budgets,
            self.now(),
            lease_id=self.lease_id(),
            lease_ms=self.stream_lease_ms if demand.stream else self.lease_ms,
            default_max_tokens_cap=self.default_max_tokens_cap,
        )
        plan = planned.plan
        decision, shared = await self.stores.under(limits.failure_mode).run(lambda store: store.admit(plan))
        if isinstance(decision, Admitted):
            return Ticket(
                organization_id=demand.organization_id,
                shared=shared,
                token_buckets=tuple(b for b in planned.buckets if b.kind == "tokens"),
                counters=planned.counters,
                reserved_tokens=planned.reserved_tokens,
                reserved_micro_usd=planned.reserved_micro_usd,
                max_tokens=planned.sent_max if planned.sent_max != demand.max_tokens else None,
                headers=admitted_headers(planned.buckets, decision.levels),
                budget=tightest(planned.counters, decision.used),
                lease=plan.lease,
            )
        if isinstance(decision, BucketRefused):
            raise self._denied(rate_limited(planned.buckets[decision.index], decision.level), None)
        store = self.stores.pinned(shared)
        if isinstance(decision, CounterRefused):
            refused = planned.counters[decision.index]
            exhausted = await self._budget_exhausted(store, demand, refused.period, budgets, planned)
            if decision.used < refused.limit:  # room left: only this request is refused
                left = refused.limit - decision.used
                fits = max_tokens_that_fit(
                    refused.unit, left, demand.prompt_tokens, demand.choices, demand.pricing
                )
                exhausted.message = too_large_message(refused.period, refused.unit, left, fits)
            raise self._denied(exhausted, refused.period)
        assert isinstance(decision, LockedOut)
        exhausted = await self._budget_exhausted(
            store, demand, decision.period, budgets, planned, locked_until=decision.until_ms
        )
        raise self._denied(exhausted, decision.period)

    def _denied(self, denied: LimitDenied, period: Period | None) -> LimitDenied:
        if self.on_denied is not None:
            self.on_denied(denied, period)
        return denied

    async def _budget_exhausted(
        self,
        store: LimitStore,
        demand: Demand,
        period: Period,
        budgets: Budgets | None,
        planned: PlannedAdmit,
        *,
        locked_until: int | None = None,
    ) -> LimitDenied:
        """The 402 of ``period``, with what is left of its budgets as the store sees it now."""
        span: PeriodWindow = planned.windows[period]
        now_ms = planned.plan.now_ms
        tokens_left: int | None = None
        micro_left: int | None = None
        if budgets is not None:
            org_id = demand.organization_id
            keys = tuple(store_keys.counter_key(org_id, span, unit) for unit in UNITS)
            try:
                seen = await store.snapshot((), keys, store_keys.lockout_key(org_id), now_ms)
            except LimitStoreUnavailable:
                pass  # the refusal then omits the figures
            else:
                tokens_used, micro_used = seen.used
                token_limit, micro_limit = budgets.of(period, "tokens"), budgets.of(period, "micro_usd")
                if token_limit is not None:
                    tokens_left = max(0, token_limit - tokens_used)
                if micro_limit is not None:
                    micro_left = max(0, micro_limit - micro_used)
        reset_ms = locked_until if locked_until is not None else span.ends_at_ms
        return budget_exhausted(
            period, reset_ms, now_ms, tokens_remaining=tokens_left, micro_usd_remaining=micro_left
        )

    async def settle(self, ticket: Ticket, tokens: int, micro_usd: int) -> None:
        """Correct the token buckets and move the budget reservation to the actual figures."""
        await self._adjust(ticket, tokens, micro_usd)

    async def refund(self, ticket: Ticket) -> None:
        """The call failed: give back the token estimate and the budget reservation."""
        await self._adjust(ticket, 0, 0)

    async def _adjust(self, ticket: Ticket, tokens: int, micro_usd: int) -> None:
        buckets, counters = adjustments(
            ticket.token_buckets,
            ticket.counters,
            ticket.reserved_tokens,
            ticket.reserved_micro_usd,
            tokens,
            micro_usd,
        )
        if not buckets and not counters:
            return
        try:
            await self.stores.pinned(ticket.shared).adjust(buckets, counters, to_ms(self.now()), ticket.lease)
        except LimitStoreUnavailable as exc:
            # The reservation stays as it was: conservative (never under-counts a budget).
            log.error("limits_settle_failed", organization_id=ticket.organization_id, error=str(exc)[:200])

    # ------------------------------------------------------------------ admin and readiness, handed through

    async def state(self, org_id: str) -> OrgState:
        return await self.admin.state(org_id)

    async def reset(self, org_id: str, target: ResetTarget, key_id: str | None) -> tuple[str, ...]:
        return await self.admin.reset(org_id, target, key_id)

    async def limits_changed(self, org_id: str) -> None:
        await self.admin.limits_changed(org_id)

    @property
    def degraded(self) -> str | None:
        return self.stores.degraded

    async def readiness(self) -> tuple[CheckStatus, str]:
        return await self.stores.readiness()
