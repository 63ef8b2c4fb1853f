"""Client-sent date-times read as UTC instants, the calendar's edges included."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_instant(moment: datetime) -> datetime:
    """``moment`` (aware) in UTC. An offset that pushes the calendar's first or last day past its
    edge (0001-01-01T00:30:00+01:00, 9999-12-31T23:59:59-01:00) is clamped to that edge."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)
