"""An organisation's budgets: from its runtime config, else from the external budget service.

``BudgetLookup`` answers ``Budgets`` (None: no budget applies). When the budget service cannot
answer, the organisation's ``failure_mode`` decides: ``fail_closed`` refuses with 503, ``fail_open``
admits without budgets (logged)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import structlog

from router_impl.config.model import OrgLimits
from router_impl.errors import ApiError
from router_impl.limits.store import Period, Unit

PERIODS: tuple[Period, ...] = ("DAILY", "MONTHLY")
UNITS: tuple[Unit, ...] = ("tokens", "micro_usd")
_MICRO = Decimal(1_000_000)

log = structlog.get_logger("router.limits")


@dataclass(frozen=True)
class Budgets:
    """Budget amounts of one organisation; None means no budget of that kind."""

    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_micro_usd: int | None = None
    monthly_micro_usd: int | None = None

    def of(self, period: Period, unit: Unit) -> int | None:
        if period == "DAILY":
            return self.daily_tokens if unit == "tokens" else self.daily_micro_usd
        return self.monthly_tokens if unit == "tokens" else self.monthly_micro_usd

    @property
    def empty(self) -> bool:
        return all(self.of(p, u) is None for p in PERIODS for u in UNITS)


class BudgetSource(Protocol):
    """The external budget service (cached); raises when it cannot answer."""

    async def budgets(self, org_id: str) -> Any: ...


class BudgetLookup:
    """Budgets of an organisation: its configured ones win; else the budget service's, if any."""

    def __init__(self, budget_service: BudgetSource | None = None) -> None:
        self.budget_service = budget_service

    async def budgets(self, org_id: str, limits: OrgLimits | None) -> Budgets | None:
        if limits is not None and limits.budgets is not None and not limits.budgets.empty:
            b = limits.budgets
            return Budgets(b.daily_tokens, b.monthly_tokens, _micro(b.daily_usd), _micro(b.monthly_usd))
        if self.budget_service is None:
            return None
        try:
            external = await self.budget_service.budgets(org_id)
        except Exception as exc:  # the client raises its own "unavailable" error; any failure counts
            if limits is not None and limits.failure_mode == "fail_closed":
                raise ApiError(
                    "SERVICE_UNAVAILABLE",
                    "The budget service is unavailable; retry later.",
                    headers={"Retry-After": "1"},
                ) from exc
            log.warning("budget_service_unavailable", organization_id=org_id, error=type(exc).__name__)
            return None
        if external is None:
            return None
        found = Budgets(
            external.daily_tokens,
            external.monthly_tokens,
            external.daily_micro_usd,
            external.monthly_micro_usd,
        )
        return None if found.empty else found


def _micro(usd: Decimal | None) -> int | None:
    return None if usd is None else int(usd * _MICRO)
