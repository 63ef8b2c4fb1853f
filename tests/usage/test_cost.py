"""A request's cost in exact integer micro-dollars, and its one conversion to a wire float."""

from __future__ import annotations

from decimal import Decimal

from router_impl.config.model import ModelPricing
from router_impl.usage.cost import cost_micro_usd, micro_to_usd


def pricing(per_1m_in: str, per_1m_out: str) -> ModelPricing:
    return ModelPricing(
        input_usd_per_1m_tokens=Decimal(per_1m_in), output_usd_per_1m_tokens=Decimal(per_1m_out)
    )


def test_prices_per_million_tokens_are_micro_dollars_per_token() -> None:
    assert cost_micro_usd(pricing("3.00", "15.00"), 1000, 200) == 3000 + 3000
    assert cost_micro_usd(pricing("3.00", "15.00"), 0, 0) == 0
    assert cost_micro_usd(pricing("0", "2"), 1000, 7) == 14


def test_input_and_output_are_priced_each_at_its_own_rate() -> None:
    assert cost_micro_usd(pricing("1", "100"), 3, 0) == 3
    assert cost_micro_usd(pricing("1", "100"), 0, 3) == 300


def test_a_fraction_of_a_micro_dollar_rounds_half_up() -> None:
    assert cost_micro_usd(pricing("0.5", "0"), 1, 0) == 1  # 0.5 rounds up
    assert cost_micro_usd(pricing("0.4", "0"), 1, 0) == 0
    assert cost_micro_usd(pricing("0.25", "0.25"), 5, 5) == 3  # 2.5 rounds up, not to even
    assert cost_micro_usd(pricing("0.0001", "0"), 4_999, 0) == 0
    assert type(cost_micro_usd(pricing("0.5", "0"), 3, 0)) is int


def test_micro_dollars_become_dollars_only_for_the_wire() -> None:
    assert micro_to_usd(1_500_000) == 1.5
    assert micro_to_usd(1) == 0.000001
    assert micro_to_usd(0) == 0.0
