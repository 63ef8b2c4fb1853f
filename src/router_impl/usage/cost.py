"""Cost of a request in exact integer micro-dollars (never float sums)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from router_impl.config.model import ModelPricing

_MICRO = Decimal(1_000_000)


def cost_micro_usd(pricing: ModelPricing, tokens_input: int, tokens_output: int) -> int:
    """Prices are USD per million tokens, so the product is already in micro-dollars."""
    total = pricing.input_usd_per_1m_tokens * tokens_input + pricing.output_usd_per_1m_tokens * tokens_output
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micro_to_usd(micro: int) -> float:
    """For the wire only (the contract's cost_usd is a JSON number); sums stay in micro-dollars."""
    return float(Decimal(micro) / _MICRO)
