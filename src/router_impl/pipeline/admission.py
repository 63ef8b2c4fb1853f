"""The admission stage: rate limits and the budget reservation, taken on entry, settled or refunded.

On entry a request is refused while the usage outbox is full (never served without its record),
then admitted by the limits service: its ``max_tokens`` clamped to the cap, or refused with the
refusal accounted (usage record and audit event). Inside, ``settle`` moves the reservation to what
the call actually used; leaving without having settled (a failure, a client that went away before
the stream began) refunds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any

import structlog

from router_impl.config.model import ModelPolicy
from router_impl.errors import ApiError
from router_impl.limits.service import Demand, LimitDenied, LimitsService, Ticket
from router_impl.pipeline.call import Call
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.accounting import Accounting, refused
from router_impl.usage.cost import micro_to_usd
from router_impl.usage.tokens import prompt_bound, prompt_estimate

log = structlog.get_logger("router.pipeline")

BudgetAfter = tuple[dict[str, Any] | None, dict[str, str]]


class Admission:
    """``async with Admission(...) as admitted``: ``admitted.call`` is the call as admitted (its
    ``max_tokens`` clamped), ``admitted.headers`` the RateLimit headers to answer with."""

    __slots__ = (
        "_accepting",
        "_accounting",
        "_limits",
        "_now",
        "_policy",
        "_settled",
        "_tracer",
        "call",
        "ticket",
    )

    def __init__(
        self,
        call: Call,
        policy: ModelPolicy,
        *,
        limits: LimitsService | None,
        accepting: Callable[[], bool],
        accounting: Accounting,
        now: Callable[[], datetime],
        tracer: Tracing,
    ) -> None:
        self.call = call
        self._policy = policy
        self._limits = limits
        self._accepting = accepting
        self._accounting = accounting
        self._now = now
        self._tracer = tracer
        self.ticket: Ticket | None = None
        self._settled = False

    @property
    def headers(self) -> dict[str, str]:
        return self.ticket.headers if self.ticket is not None else {}

    async def __aenter__(self) -> Admission:
        with self._tracer.span("limits"):
            await self._admit()
        return self

    async def _admit(self) -> None:
        call = self.call
        if not self._accepting():
            log.error("usage_outbox_full_refusing")
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Usage accounting is backlogged; billable requests are refused until it drains.",
                headers={"Retry-After": "30"},
            )
        if self._limits is None:
            return
        body = call.body
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        try:
            ticket = await self._limits.admit(demand_of(call, self._policy, body.get(name)))
        except LimitDenied as denied:
            accounted = refused(
                call.requester,
                model=self._policy.model,
                code=denied.code,
                scope=denied.scope,
                limit_state=denied.limit_state,
                status=denied.status_code,
                at=self._now(),
            )
            await self._accounting.write(accounted)
            raise
        self.ticket = ticket
        if ticket is not None and ticket.max_tokens is not None:
            self.call = replace(call, body={**body, name: ticket.max_tokens})

    async def settle(self, tokens: int, micro_usd: int) -> BudgetAfter:
        """The call is over: what it used replaces what was reserved. The budget's snapshot after."""
        self._settled = True
        ticket = self.ticket
        if ticket is None or self._limits is None:
            return None, {}
        await self._limits.settle(ticket, tokens, micro_usd)
        return budget_after(ticket, tokens, micro_usd)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._settled and self.ticket is not None and self._limits is not None:
            self._settled = True
            await self._limits.refund(self.ticket)


def demand_of(call: Call, policy: ModelPolicy, asked: Any) -> Demand:
    body = call.body
    choices = body.get("n")
    template = policy.prompt_template_tokens
    return Demand(
        organization_id=call.principal.organization_id,
        key_id=call.principal.key_id,
        prompt_tokens=prompt_estimate(call.kind, body),
        prompt_bound=prompt_bound(body, template.per_message, template.per_request),
        max_tokens=asked if isinstance(asked, int) and not isinstance(asked, bool) else None,
        pricing=policy.pricing,
        choices=choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 0 else 1,
        stream=call.stream,
        completes=call.kind != "embedding",
    )


def budget_after(ticket: Ticket, tokens: int, micro_usd: int) -> BudgetAfter:
    """The usage record's budget snapshot: the tightest period's room once the reservation settled.

    The schema's snapshot needs both figures; a period that budgets only one of tokens and USD has
    no snapshot, and its one figure goes into metadata (budget_period, budget_*_remaining).
    """
    if ticket.budget is None:
        return None, {}
    view = ticket.budget
    snapshot: dict[str, Any] = {"period": view.period}
    if view.tokens_remaining is not None:
        snapshot["tokens_remaining"] = max(0, view.tokens_remaining + ticket.reserved_tokens - tokens)
    if view.micro_usd_remaining is not None:
        left = view.micro_usd_remaining + ticket.reserved_micro_usd - micro_usd
        snapshot["currency_remaining"] = micro_to_usd(max(0, left))
    if len(snapshot) == 3:
        return snapshot, {}
    return None, {f"budget_{name}": str(value) for name, value in snapshot.items()}
