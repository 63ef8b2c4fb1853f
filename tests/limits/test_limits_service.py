"""The limits service's decisions on rates, resets and failure modes, on the embedded store and on Redis
(budgets: tests/limits/test_limits_service_budgets.py).

The same plans run on Redis in tests/limits/test_limit_stores.py (store semantics) and end to end
in tests/e2e/limits/ (two routers sharing one Redis)."""

from __future__ import annotations

import pytest

from router_impl.config.model import (
    BudgetLimits,
    OrgLimits,
    RateLimitConfig,
)
from router_impl.errors import ApiError
from router_impl.limits.service import LimitDenied
from tests.harness.clock import ManualClock, WallClock
from tests.limits.limits_service_support import (
    NOON,
    ORG,
    DownStore,
    Factory,
    demand,
)


async def test_an_org_without_limits_is_not_counted(service: Factory) -> None:
    limits = service({})
    assert await limits.admit(demand()) is None


async def test_request_bucket_refuses_past_its_burst_with_retry_after_from_the_refill_rate(
    service: Factory,
) -> None:
    clock = WallClock(NOON)
    limits = service({ORG: OrgLimits(rate_limits=RateLimitConfig(requests_per_minute=2))}, clock=clock)
    first = await limits.admit(demand())
    assert first is not None and first.headers["RateLimit-Remaining"] == "1"
    assert first.headers["RateLimit-Limit"] == "2"
    await limits.admit(demand())
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand())
    error = denied.value
    assert (error.status_code, error.code, error.limit_state) == (429, "RATE_LIMIT_EXCEEDED", "RATE_LIMITED")
    assert error.retry_after_seconds == 30  # one request refills in 60 s / 2
    assert error.headers["Retry-After"] == "30"
    assert error.limit_context == {"scope": "org", "limit": 2, "remaining": 0, "reset_seconds": 60}
    clock.advance(30)
    assert await limits.admit(demand()) is not None


async def test_key_buckets_are_per_key_and_the_org_bucket_is_shared(service: Factory) -> None:
    limits = service(
        {
            ORG: OrgLimits(
                rate_limits=RateLimitConfig(requests_per_minute=3),
                key_rate_limits=RateLimitConfig(requests_per_minute=1),
            )
        }
    )
    await limits.admit(demand(key="a"))
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(key="a"))
    assert denied.value.limit_context == {"scope": "key", "limit": 1, "remaining": 0, "reset_seconds": 60}
    await limits.admit(demand(key="b"))
    await limits.admit(demand(key="c"))
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(key="d"))  # d's own bucket is full, the organisation's is not
    assert denied.value.limit_context["scope"] == "org"


async def test_token_bucket_is_charged_by_estimate_and_corrected_by_actual_usage(service: Factory) -> None:
    limits = service({ORG: OrgLimits(rate_limits=RateLimitConfig(tokens_per_minute=100))})
    ticket = await limits.admit(demand(prompt=10, max_tokens=50))  # estimate 60
    assert ticket is not None
    with pytest.raises(LimitDenied):
        await limits.admit(demand(prompt=10, max_tokens=50))  # 40 left < 60
    await limits.settle(ticket, tokens=15, micro_usd=0)  # 45 given back: 85 left
    assert await limits.admit(demand(prompt=10, max_tokens=50)) is not None
    state = await limits.state(ORG)
    assert state.tokens_remaining == 25


async def test_a_request_larger_than_the_token_bucket_waits_for_a_full_bucket_rather_than_forever(
    service: Factory,
) -> None:
    clock = WallClock(NOON)
    limits = service({ORG: OrgLimits(rate_limits=RateLimitConfig(tokens_per_minute=100))}, clock=clock)
    assert await limits.admit(demand(prompt=10, max_tokens=1000)) is not None
    with pytest.raises(LimitDenied) as denied:
        await limits.admit(demand(prompt=10, max_tokens=1000))
    assert denied.value.retry_after_seconds == 60
    clock.advance(60)
    assert await limits.admit(demand(prompt=10, max_tokens=1000)) is not None


async def test_fail_open_enforces_locally_while_the_shared_store_is_down_and_recovers(
    service: Factory,
) -> None:
    shared, monotonic = DownStore(), ManualClock()
    limits = service(
        {ORG: OrgLimits(rate_limits=RateLimitConfig(requests_per_minute=1), failure_mode="fail_open")},
        shared=shared,
        monotonic=monotonic,
    )
    shared.down = True
    ticket = await limits.admit(demand())
    assert ticket is not None and not ticket.shared
    assert (await limits.readiness())[0] == "warn"
    with pytest.raises(LimitDenied):
        await limits.admit(demand())  # the local bucket still limits
    calls = shared.calls
    with pytest.raises(LimitDenied):
        await limits.admit(demand())
    assert shared.calls == calls  # not retried within the interval
    shared.down = False
    monotonic.advance(1.0)
    ticket = await limits.admit(demand())
    assert ticket is not None and ticket.shared
    assert (await limits.readiness())[0] == "pass"


async def test_fail_closed_answers_503_while_the_shared_store_is_down(service: Factory) -> None:
    shared = DownStore()
    limits = service(
        {ORG: OrgLimits(rate_limits=RateLimitConfig(requests_per_minute=10), failure_mode="fail_closed")},
        shared=shared,
    )
    shared.down = True
    with pytest.raises(ApiError) as error:
        await limits.admit(demand())
    assert (error.value.status_code, error.value.code) == (503, "SERVICE_UNAVAILABLE")
    assert not isinstance(error.value, LimitDenied)


async def test_reset_of_one_key_leaves_the_organisation_bucket(service: Factory) -> None:
    limits = service(
        {
            ORG: OrgLimits(
                rate_limits=RateLimitConfig(requests_per_minute=5),
                key_rate_limits=RateLimitConfig(requests_per_minute=1),
            )
        }
    )
    await limits.admit(demand(key="a"))
    await limits.admit(demand(key="b"))
    cleared = await limits.reset(ORG, "buckets", "a")
    assert cleared == ("key_bucket:a:requests",)
    assert await limits.admit(demand(key="a")) is not None
    with pytest.raises(LimitDenied):
        await limits.admit(demand(key="b"))
    cleared = await limits.reset(ORG, "buckets", None)
    assert set(cleared) >= {"org_bucket:requests", "key_bucket:a:requests", "key_bucket:b:requests"}
    assert (await limits.state(ORG)).requests_remaining == 5


async def test_budget_reset_clears_the_current_periods_usage(service: Factory) -> None:
    limits = service({ORG: OrgLimits(budgets=BudgetLimits(daily_tokens=100, monthly_tokens=1000))})
    ticket = await limits.admit(demand(prompt=10, max_tokens=40))
    assert ticket is not None
    await limits.settle(ticket, 50, 0)
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [50, 50]
    cleared = await limits.reset(ORG, "budget", None)
    assert {"daily_budget:tokens", "monthly_budget:tokens"} <= set(cleared)
    assert [b.tokens_used for b in (await limits.state(ORG)).budgets] == [0, 0]
