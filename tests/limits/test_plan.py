"""The admission plan builder's properties (pure: no store, no clock), by Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from router_impl.config.model import ModelPricing, OrgLimits, RateLimitConfig
from router_impl.limits.budgets import Budgets
from router_impl.limits.periods import to_ms
from router_impl.limits.plan import Demand, PlannedAdmit, adjustments, plan_admit
from router_impl.usage.cost import cost_micro_usd

CAP = 4096
LEASE_MS = 150_000

amounts = st.none() | st.integers(0, 10**9)
rates = st.none() | st.builds(
    RateLimitConfig,
    requests_per_minute=st.none() | st.integers(1, 10**6),
    burst=st.none() | st.integers(1, 10**6),
    tokens_per_minute=st.none() | st.integers(1, 10**9),
)
limits_ = st.builds(
    OrgLimits,
    rate_limits=rates,
    key_rate_limits=rates,
    max_tokens_cap=st.none() | st.integers(1, 10**6),
)
budgets_ = st.none() | st.builds(Budgets, amounts, amounts, amounts, amounts)
pricing = st.builds(
    ModelPricing,
    input_usd_per_1m_tokens=st.decimals(0, 100, places=3),
    output_usd_per_1m_tokens=st.decimals(0, 100, places=3),
)
demands = st.builds(
    Demand,
    organization_id=st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    key_id=st.from_regex(r"key_[a-z0-9]{1,8}", fullmatch=True),
    prompt_tokens=st.integers(0, 10**6),
    max_tokens=st.none() | st.integers(1, 10**6),
    pricing=pricing,
    choices=st.integers(1, 8),
    stream=st.booleans(),
    completes=st.booleans(),
    prompt_bound=st.none() | st.integers(0, 2 * 10**6),
)
moments = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))


def planned(demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime) -> PlannedAdmit:
    return plan_admit(
        demand, limits, budgets, moment, lease_id="lease-1", lease_ms=LEASE_MS, default_max_tokens_cap=CAP
    )


@given(demands, limits_, budgets_, moments)
def test_every_key_of_a_plan_is_in_its_organisations_cluster_slot(
    demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime
) -> None:
    plan = planned(demand, limits, budgets, moment).plan
    tag = "{" + demand.organization_id + "}"
    keys = [plan.lockout_key, *(b.key for b in plan.buckets), *(c.key for c in plan.counters)]
    assert plan.lease is not None
    keys += [plan.lease.key, plan.lease.held_key]
    assert all(key.count("{") == 1 and tag in key for key in keys), keys
    assert len(set(keys)) == len(keys)  # no two parts of a plan share a key


@given(demands, limits_, budgets_, moments)
def test_buckets_never_cost_more_than_they_hold_and_a_request_costs_one(
    demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime
) -> None:
    for bucket in planned(demand, limits, budgets, moment).buckets:
        assert 0 <= bucket.cost <= bucket.capacity and bucket.per_ms > 0
        if bucket.kind == "requests":
            assert bucket.cost == 1.0
        assert (bucket.owner == "key") == (f":key:{demand.key_id}:" in bucket.key)


@given(demands, limits_, budgets_, moments)
def test_budgets_reserve_the_worst_case_the_backend_may_bill(
    demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime
) -> None:
    got = planned(demand, limits, budgets, moment)
    cap = limits.max_tokens_cap or (CAP if budgets is not None else None)
    if not demand.completes:
        assert got.sent_max is None
    elif cap is not None:
        assert got.sent_max is not None and got.sent_max <= cap
    completion = (got.sent_max or 0) * demand.choices
    prompt = max(demand.prompt_tokens, demand.prompt_bound or 0)
    assert got.reserved_tokens == prompt + completion
    assert got.reserved_micro_usd == cost_micro_usd(demand.pricing, prompt, completion)
    configured = (
        0
        if budgets is None
        else sum(budgets.of(p, u) is not None for p in ("DAILY", "MONTHLY") for u in ("tokens", "micro_usd"))
    )
    assert len(got.counters) == configured
    for counter in got.counters:
        assert counter.amount == (got.reserved_tokens if counter.unit == "tokens" else got.reserved_micro_usd)
        assert 0 < counter.expires_at_ms - to_ms(moment) <= 31 * 86_400_000  # the period ends ahead


@given(demands, limits_, budgets_, moments)
def test_the_lease_lapses_its_length_after_the_plans_instant(
    demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime
) -> None:
    plan = planned(demand, limits, budgets, moment).plan
    assert plan.now_ms == to_ms(moment)
    assert plan.lease is not None and plan.lease.until_ms == plan.now_ms + LEASE_MS


@given(demands, limits_, budgets_, moments, st.integers(0, 10**7))
def test_a_refund_gives_back_exactly_what_admit_took_and_settling_the_reservation_changes_nothing(
    demand: Demand, limits: OrgLimits, budgets: Budgets | None, moment: datetime, actual: int
) -> None:
    got = planned(demand, limits, budgets, moment)
    token_buckets = tuple(b for b in got.buckets if b.kind == "tokens")
    reserved = (got.reserved_tokens, got.reserved_micro_usd)
    buckets, counters = adjustments(token_buckets, got.counters, *reserved, 0, 0)
    assert [b.delta for b in buckets] == [b.cost for b in token_buckets]
    assert [c.delta for c in counters] == [-c.amount for c in got.counters]
    _, settled = adjustments(token_buckets, got.counters, *reserved, *reserved)
    assert all(c.delta == 0 for c in settled)
    charged, _ = adjustments(token_buckets, got.counters, *reserved, actual, 0)
    for bucket, change in zip(token_buckets, charged, strict=True):
        assert change.delta == bucket.cost - min(float(actual), bucket.capacity)
        assert change.reserved == bucket.cost


def test_an_organisation_without_limits_or_budgets_plans_nothing_but_its_lease() -> None:
    demand = Demand("acme", "key_1", 10, 20, ModelPricing(input_usd_per_1m_tokens=Decimal(1)))
    got = planned(demand, OrgLimits(), None, datetime(2026, 11, 27, 12, tzinfo=UTC))
    assert (got.buckets, got.counters, got.sent_max) == ((), (), 20)
