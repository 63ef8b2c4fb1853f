"""BudgetServiceClient's reading of answers: dollars as exact integer micro-dollars, absent limits,
unknown properties, and answers outside the contract (the mock budget service, tests/harness)."""

from __future__ import annotations

import pytest

from router_impl.limits.budget_service import (
    BudgetServiceUnavailable,
    ExternalBudgets,
    micro_usd,
)
from tests.harness.budget_service import raw_answer

ORG = "org-a"


async def test_budgets_are_parsed_with_dollars_as_integer_micro_dollars(budget_service, make_client):
    budget_service.set_budget(
        ORG, daily_tokens=100_000, monthly_tokens=2_000_000, daily_usd=12.5, monthly_usd=300
    )
    client = make_client()
    assert await client.budgets(ORG) == ExternalBudgets(
        daily_tokens=100_000,
        monthly_tokens=2_000_000,
        daily_micro_usd=12_500_000,
        monthly_micro_usd=300_000_000,
    )


@pytest.mark.parametrize(
    ("written", "micro"),
    [
        ("0.1", 100_000),
        ("0.2", 200_000),
        ("0.3", 300_000),
        ("0.30000000000000004", 300_000),  # what 0.1 + 0.2 is in floats: no phantom micro-dollar
        ("1.005", 1_005_000),  # float arithmetic gives 1_004_999
        ("8.2", 8_200_000),  # float arithmetic gives 8_199_999
        ("0.000001", 1),
        ("0.0000019", 1),  # fractions of a micro-dollar are dropped, never rounded up
        ("0", 0),
        ("7", 7_000_000),
        ("1e9", 10**15),  # the largest budget the contract allows, still exact
        ("1000000000.0", 10**15),
        ("999999999.999999", 999_999_999_999_999),
    ],
)
async def test_dollar_amounts_are_converted_exactly_as_written(budget_service, make_client, written, micro):
    budget_service.configure(raw_body=raw_answer(daily_usd=written, monthly_usd=written))
    budgets = await make_client().budgets(ORG)
    assert budgets is not None
    assert (budgets.daily_micro_usd, budgets.monthly_micro_usd) == (micro, micro)
    assert isinstance(budgets.daily_micro_usd, int)


def test_micro_dollar_sums_are_exact_where_float_sums_are_not():
    assert 0.1 + 0.2 != 0.3
    assert micro_usd(0.1) + micro_usd(0.2) == micro_usd(0.3) == 300_000
    assert micro_usd(None) is None


async def test_absent_limits_mean_no_budget_of_that_kind(budget_service, make_client):
    budget_service.set_budget(ORG, monthly_usd=50)
    assert await make_client().budgets(ORG) == ExternalBudgets(None, None, None, 50_000_000)


async def test_unknown_properties_in_the_answer_are_ignored(budget_service, make_client):
    budget_service.configure(raw_body=raw_answer(daily_tokens="10", plan='"enterprise"'))
    assert await make_client().budgets(ORG) == ExternalBudgets(10, None, None, None)


@pytest.mark.parametrize(
    "fields",
    [
        {"currency": '"EUR"'},
        {"daily_usd": "-0.01"},
        {"monthly_usd": "1000000000.01"},  # beyond the exact range
        {"daily_usd": '"5"'},
        {"daily_usd": "true"},
        {"daily_tokens": "1.5"},
        {"daily_tokens": "-1"},
        {"monthly_tokens": '"100"'},
        {"monthly_tokens": "9223372036854775808"},  # past int64
        {"cache_ttl_seconds": "86401"},
        {"cache_ttl_seconds": "-1"},
        {"updated_at": '"yesterday"'},
        {"organization_id": '""'},
    ],
)
async def test_an_answer_outside_the_contract_is_not_a_budget(budget_service, make_client, fields):
    budget_service.configure(raw_body=raw_answer(**fields))
    client = make_client()
    with pytest.raises(BudgetServiceUnavailable):
        await client.budgets(ORG)
    assert client.degraded and client.failures == 1


async def test_an_answer_missing_a_required_property_is_not_a_budget(budget_service, make_client):
    budget_service.configure(raw_body=b'{"organization_id": "org-a", "currency": "USD", "daily_tokens": 5}')
    with pytest.raises(BudgetServiceUnavailable):
        await make_client().budgets(ORG)
