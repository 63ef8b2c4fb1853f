"""The limits service's decisions (buckets, budgets, periods, failure modes) on the embedded store.

The same plans run on Redis in tests/limits/test_limit_stores.py (store semantics) and end to end
in tests/e2e/test_limits.py (two routers sharing one Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from router_impl.config.model import (
    BudgetLimits,
    ModelPricing,
    OrgLimits,
    RateLimitConfig,
    RuntimeConfig,
)
from router_impl.errors import ApiError
from router_impl.limits.service import Demand, LimitDenied, LimitsService
from router_impl.limits.store import LimitStoreUnavailable
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.clock import ManualClock
from tests.harness.services import RedisServer

ORG = "org-1"
PRICING = ModelPricing(input_usd_per_1m_tokens=Decimal("1"), output_usd_per_1m_tokens=Decimal("2"))
# Redis expires budget counters at their period's end by its own clock (the real one), so the
# injected clock runs on a day that has not ended yet: tomorrow (UTC), whatever day the suite runs.
NOON = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
MIDNIGHT_AFTER = NOON.replace(hour=0) + timedelta(days=1)


class WallClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


class DownStore(MemoryLimitStore):
    """A shared store that fails while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    async def admit(self, plan: Any) -> Any:
        self.calls += 1
        if self.down:
            raise LimitStoreUnavailable("connection refused")
        return await super().admit(plan)


Factory = Callable[..., LimitsService]


def _first_of_next_month(moment: datetime) -> str:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00.000Z"


@pytest.fixture(params=["memory", "redis"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds a LimitsService whose store is in process, or Redis (a database of its own, emptied)."""
    redis: Redis | None = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis = Redis.from_url(server.url.rsplit("/", 1)[0] + "/13")
        await redis.flushdb()

    def make(
        limits: dict[str, OrgLimits],
        *,
        clock: WallClock | None = None,
        shared: MemoryLimitStore | None = None,
        budget_service: Any = None,
        monotonic: Callable[[], float] | None = None,
        **options: Any,
    ) -> LimitsService:
        config = RuntimeConfig(org_limits=limits)
        store: Any = shared if shared is not None else (RedisLimitStore(redis) if redis is not None else None)
        return LimitsService(
            config=lambda: config,
            local=MemoryLimitStore(),
            shared=store,
            budget_service=budget_service,
            now=clock or WallClock(NOON),
            monotonic=monotonic or ManualClock(),
            **options,
        )

    yield make
    if redis is not None:
        await redis.aclose()


def demand(prompt: int = 10, max_tokens: int | None = 20, key: str = "key-1", org: str = ORG) -> Demand:
    return Demand(org, key, prompt, max_tokens, PRICING)


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
