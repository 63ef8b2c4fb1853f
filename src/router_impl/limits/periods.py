"""Budget periods in UTC: which day or month an instant belongs to, and when that period ends.

Exact at the boundary: 23:59:59.999 belongs to the day that ends at the next 00:00:00.000, and
00:00:00.000 starts the next one (the end is exclusive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from router_impl.limits.store import Period


@dataclass(frozen=True)
class PeriodWindow:
    period: Period
    label: str  # "2026-11-27" or "2026-11": part of the counter's key, so a new period starts at zero
    ends_at: datetime  # exclusive, aware UTC

    @property
    def ends_at_ms(self) -> int:
        return to_ms(self.ends_at)


def to_ms(moment: datetime) -> int:
    """Unix milliseconds, exact (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def window(period: Period, moment: datetime) -> PeriodWindow:
    moment = moment.astimezone(UTC)
    if period == "DAILY":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return PeriodWindow(period, start.strftime("%Y-%m-%d"), start + timedelta(days=1))
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return PeriodWindow(period, start.strftime("%Y-%m"), following)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
