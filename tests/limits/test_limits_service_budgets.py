"""The limits service's budgets: reservations, settlement, leases, periods, currency budgets and the
budget service, on the embedded store and on Redis."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from router_impl.config.model import (
    BudgetLimits,
    OrgLimits,
    RateLimitConfig,
)
from router_impl.errors import ApiError
from router_impl.limits.service import Demand, LimitDenied
from tests.harness.clock import WallClock
from tests.limits.limits_service_support import (
    MIDNIGHT_AFTER,
    NOON,
    ORG,
    PRICING,
    Factory,
    _first_of_next_month,
    demand,
)


async def test_daily_token_budget_reserves_the_worst_case_settles_then_refuses(service: Factory) -> None:
    clock = WallClock(NOON)
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=100))}, clock=clock)
    first = await limits.admit(demand(prompt=10, max_tokens=40))  # reserves 50
    assert first is not None and first.reserved_tokens == 50
    second = await limits.admit(demand(prompt=10, max_tokens=40))  # reserves 50: full
    assert second is not None
    await limits.settle(first, tokens=20, micro_usd=0)  # 30 back
    await limits.settle(second, tokens=50, micro_usd=0)
    third = await limits.admit(demand(prompt=10, max_tokens=20))  # 30 fits exactly
    assert third is not None
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=1, max_tokens=1))
    error = denied.value
    assert (error.status_code, error.code, error.limit_state) == (402, "BUDGET_EXCEEDED", "BUDGET_EXCEEDED")
    assert error.limit_context == {
        "period": "DAILY",
        "reset_at": MIDNIGHT_AFTER.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "tokens_remaining": 0,
    }
    assert error.retry_after_seconds == 12 * 3600


async def test_budget_lockout_holds_after_a_refund_until_an_admin_reset(service: Factory) -> None:
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=60))})
    ticket = await limits.admit(demand(prompt=10, max_tokens=50))  # reserves all 60
    assert ticket is not None
    with pytest.raises(LimitDenied):
        await limits.admit(demand(prompt=1, max_tokens=1))  # spent: this refusal locks out
    await limits.refund(ticket)  # room again, but the organisation stays locked out
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=1, max_tokens=1))
    assert denied.value.limit_context["tokens_remaining"] == 60
    state = await limits.state(ORG)
    assert state.lockout_until == MIDNIGHT_AFTER
    cleared = await limits.reset(ORG, "buckets", None)
    assert "lockout" in cleared
    assert await limits.admit(demand(prompt=1, max_tokens=1)) is not None


async def test_a_request_too_large_for_what_is_left_is_refused_alone_with_a_max_tokens_that_fits(
    service: Factory,
) -> None:
    """Issue 17.7: daily_tokens 1000; a request without max_tokens reserves prompt + the 4,096 cap."""
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=1000))})
    first = await limits.admit(demand(prompt=10, max_tokens=5))
    assert first is not None
    await limits.settle(first, tokens=15, micro_usd=0)
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=15, max_tokens=None))
    refused = denied.value
    assert (refused.status_code, refused.code) == (402, "BUDGET_EXCEEDED")
    assert refused.limit_context["tokens_remaining"] == 985
    assert "985 tokens left" in refused.message and "max_tokens of at most 970 fits" in refused.message
    assert "exhausted" not in refused.message
    state = await limits.state(ORG)
    assert state.lockout_until is None  # the organisation is not locked out
    fitting = await limits.admit(demand(prompt=15, max_tokens=970))
    assert fitting is not None and [b.tokens_used for b in (await limits.state(ORG)).budgets] == [1000]


async def test_a_spending_budget_refusal_names_the_usd_left_and_what_fits(service: Factory) -> None:
    # PRICING: 1 USD in, 2 USD out per million tokens = 1 and 2 micro-USD per token.
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_usd=Decimal("0.001")))})
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=100, max_tokens=4000))  # 100 + 8000 micro-USD > 1000
    assert denied.value.limit_context["currency_remaining"] == 0.001
    assert "0.001000 USD left" in denied.value.message
    assert "max_tokens of at most 450 fits" in denied.value.message  # (1000 - 100) / 2
    assert await limits.admit(demand(prompt=100, max_tokens=450)) is not None
    with pytest.raises(LimitDenied) as spent:
        await limits.admit(demand(prompt=1, max_tokens=1))
    assert (await limits.state(ORG)).lockout_until == MIDNIGHT_AFTER
    assert "exhausted" in spent.value.message


async def test_a_reservation_never_settled_is_given_back_by_the_first_admit_after_its_lease(
    service: Factory,
) -> None:
    clock = WallClock(NOON)
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=100))}, clock=clock, lease_seconds=10)
    killed = await limits.admit(demand(prompt=10, max_tokens=40))  # its router dies: never settled
    assert killed is not None and killed.lease is not None
    clock.advance(9.999)
    served = await limits.admit(demand(prompt=10, max_tokens=40))  # the lease holds: 100 used
    assert served is not None
    await limits.settle(served, tokens=30, micro_usd=0)
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [80]
    clock.advance(0.001)
    assert await limits.admit(demand(prompt=1, max_tokens=1)) is not None  # reaps the killed 50 first
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [32]


async def test_a_request_that_outlived_its_lease_is_charged_its_actual_usage_once(service: Factory) -> None:
    clock = WallClock(NOON)
    org = OrgLimits(
        budgets=BudgetLimits(daily_tokens=1000), rate_limits=RateLimitConfig(tokens_per_minute=6_000_000)
    )
    limits = service({ORG: org}, clock=clock, lease_seconds=10)
    slow = await limits.admit(demand(prompt=10, max_tokens=40))
    assert slow is not None
    clock.advance(11)
    other = await limits.admit(demand(prompt=10, max_tokens=40))  # gives the slow one's 50 back
    assert other is not None
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [50]
    await limits.settle(slow, tokens=20, micro_usd=0)  # its lease is gone: all 20 are charged
    await limits.settle(other, tokens=30, micro_usd=0)
    state = await limits.state(ORG)
    assert [b.tokens_used for b in state.budgets] == [50]
    assert state.tokens_remaining == 6_000_000 - 50  # the token bucket too (it refills 1 per 10 us)
    late_refund = await limits.admit(demand(prompt=10, max_tokens=40))
    assert late_refund is not None
    clock.advance(11)
    assert await limits.admit(demand(prompt=0, max_tokens=1)) is not None
    await limits.refund(late_refund)  # reaped already: nothing more to give back
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [51]


async def test_a_stream_holds_its_reservation_for_the_longer_stream_lease(service: Factory) -> None:
    clock = WallClock(NOON)
    limits = service(
        {ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=1000))},
        clock=clock,
        lease_seconds=10,
        stream_lease_seconds=100,
    )
    stream = Demand(ORG, "key-1", 10, 40, PRICING, stream=True)
    assert await limits.admit(stream) is not None
    clock.advance(99)
    assert await limits.admit(demand(prompt=0, max_tokens=1)) is not None
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [51]
    clock.advance(1)
    assert await limits.admit(demand(prompt=0, max_tokens=1)) is not None
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [2]


async def test_the_budget_period_rolls_over_exactly_at_utc_midnight(service: Factory) -> None:
    clock = WallClock(MIDNIGHT_AFTER - timedelta(milliseconds=1))
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=30))}, clock=clock)
    assert await limits.admit(demand(prompt=10, max_tokens=20)) is not None
    with pytest.raises(LimitDenied):
        await limits.admit(demand(prompt=10, max_tokens=20))
    clock.advance(0.001)  # 00:00:00.000: a new day, a new counter, the lockout lapsed
    ticket = await limits.admit(demand(prompt=10, max_tokens=20))
    assert ticket is not None
    state = await limits.state(ORG)
    assert [(b.period, b.tokens_used, b.reset_at) for b in state.budgets] == [
        ("DAILY", 30, MIDNIGHT_AFTER + timedelta(days=1))
    ]


async def test_monthly_currency_budget_in_exact_micro_dollars(service: Factory) -> None:
    # 10 prompt tokens at $1/M + 20 completion tokens at $2/M = 50 micro-dollars per request.
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(monthly_usd=Decimal("0.0001")))})
    assert await limits.admit(demand(prompt=10, max_tokens=20)) is not None
    assert await limits.admit(demand(prompt=10, max_tokens=20)) is not None
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=10, max_tokens=20))
    assert denied.value.limit_context == {
        "period": "MONTHLY",
        "reset_at": _first_of_next_month(NOON),
        "currency_remaining": 0.0,
    }


async def test_max_tokens_is_clamped_to_the_cap_and_the_cap_is_reserved_when_unset(service: Factory) -> None:
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=10_000), max_tokens_cap=100)})
    huge = await limits.admit(demand(prompt=10, max_tokens=1_000_000))
    assert huge is not None and huge.max_tokens == 100 and huge.reserved_tokens == 110
    unset = await limits.admit(demand(prompt=10, max_tokens=None))
    assert unset is not None and unset.max_tokens == 100 and unset.reserved_tokens == 110
    small = await limits.admit(demand(prompt=10, max_tokens=5))
    assert small is not None and small.max_tokens is None and small.reserved_tokens == 15


class Budgets:
    def __init__(self, answer: Any = None, fail: bool = False) -> None:
        self.answer, self.fail, self.calls = answer, fail, 0

    async def budgets(self, org_id: str) -> Any:
        self.calls += 1
        if self.fail:
            raise RuntimeError("budget service down")
        return self.answer


class External:
    daily_tokens = 20
    monthly_tokens = None
    daily_micro_usd = None
    monthly_micro_usd = None


async def test_budgets_come_from_the_budget_service_when_the_config_has_none(service: Factory) -> None:
    limits = service({}, budget_service=Budgets(External()))
    assert await limits.admit(demand(prompt=10, max_tokens=10)) is not None
    with pytest.raises(LimitDenied):
        await limits.admit(demand(prompt=1, max_tokens=1))


async def test_configured_budgets_take_precedence_over_the_budget_service(service: Factory) -> None:
    source = Budgets(External())
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=1000))}, budget_service=source)
    for _ in range(5):
        assert await limits.admit(demand(prompt=10, max_tokens=10)) is not None
    assert source.calls == 0


async def test_budget_service_down_follows_the_failure_mode(service: Factory) -> None:
    open_limits = service({}, budget_service=Budgets(fail=True))
    assert await open_limits.admit(demand()) is None
    closed = service(
        {ORG: OrgLimits(failure_mode="fail_closed")},
        budget_service=Budgets(fail=True),
    )
    with pytest.raises(ApiError) as error:
        await closed.admit(demand())
    assert error.value.code == "SERVICE_UNAVAILABLE"
