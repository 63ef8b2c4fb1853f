"""The limits service under test (its ``service`` fixture is in tests/limits/conftest.py): the injected
wall clock's day, a shared store that fails on demand and the demand of one request."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from router_impl.config.model import ModelPricing
from router_impl.limits.service import Demand, LimitsService
from router_impl.limits.store import LimitStoreUnavailable
from router_impl.limits.store_memory import MemoryLimitStore

ORG = "org-1"
PRICING = ModelPricing(input_usd_per_1m_tokens=Decimal("1"), output_usd_per_1m_tokens=Decimal("2"))
# Redis expires budget counters at their period's end by its own clock (the real one), so the
# injected clock runs on a day that has not ended yet: tomorrow (UTC), whatever day the suite runs.
NOON = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
MIDNIGHT_AFTER = NOON.replace(hour=0) + timedelta(days=1)


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


def demand(prompt: int = 10, max_tokens: int | None = 20, key: str = "key-1", org: str = ORG) -> Demand:
    return Demand(org, key, prompt, max_tokens, PRICING)
