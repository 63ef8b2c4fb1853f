"""What a budget refusal with room left tells the caller: how much is left, and the largest
``max_tokens`` that would still fit (pure arithmetic, issue 17.7)."""

from __future__ import annotations

from router_impl.config.model import ModelPricing
from router_impl.limits.store import Period, Unit
from router_impl.usage.cost import cost_micro_usd, micro_to_usd


def max_tokens_that_fit(
    unit: Unit, left: int, prompt_tokens: int, choices: int, pricing: ModelPricing
) -> int:
    """The largest max_tokens whose reservation fits in ``left`` (0: not even the prompt fits)."""
    choices = max(1, choices)
    if unit == "tokens":
        return max(0, (left - prompt_tokens) // choices)
    per_token = pricing.output_usd_per_1m_tokens  # USD per million tokens = micro-USD per token
    spare = left - cost_micro_usd(pricing, prompt_tokens, 0)
    if spare < 0:
        return 0
    if per_token <= 0:
        return 1_000_000  # output is free: any max_tokens fits
    fits = int(spare / per_token) // choices
    while fits > 0 and cost_micro_usd(pricing, prompt_tokens, fits * choices) > left:
        fits -= 1
    return fits


def too_large_message(period: Period, unit: Unit, left: int, fits: int) -> str:
    label = "daily" if period == "DAILY" else "monthly"
    what = f"{left} tokens" if unit == "tokens" else f"{micro_to_usd(left):.6f} USD"
    budget = "token" if unit == "tokens" else "spending"
    head = f"This request could use more than the {what} left in the organisation's {label} {budget} budget"
    if fits >= 1:
        return f"{head}; a request with max_tokens of at most {fits} fits."
    return f"{head}, even with max_tokens 1; a shorter prompt may fit."
