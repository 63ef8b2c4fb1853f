"""UTC budget periods: exact, exclusive ends, month and year rollover."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from router_impl.limits.periods import to_ms, window


@pytest.mark.parametrize(
    ("moment", "period", "label", "ends_at"),
    [
        (
            datetime(2026, 11, 27, 23, 59, 59, 999_999, tzinfo=UTC),
            "DAILY",
            "2026-11-27",
            datetime(2026, 11, 28, tzinfo=UTC),
        ),
        (datetime(2026, 11, 28, 0, 0, tzinfo=UTC), "DAILY", "2026-11-28", datetime(2026, 11, 29, tzinfo=UTC)),
        (
            datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
            "MONTHLY",
            "2026-12",
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (datetime(2027, 1, 1, tzinfo=UTC), "MONTHLY", "2027-01", datetime(2027, 2, 1, tzinfo=UTC)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), "MONTHLY", "2028-02", datetime(2028, 3, 1, tzinfo=UTC)),
        # A local time is judged in UTC: 01:30 at UTC+2 is still the previous UTC day.
        (
            datetime(2026, 11, 28, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            "DAILY",
            "2026-11-27",
            datetime(2026, 11, 28, tzinfo=UTC),
        ),
    ],
)
def test_window(moment: datetime, period: str, label: str, ends_at: datetime) -> None:
    span = window(period, moment)  # type: ignore[arg-type]
    assert (span.label, span.ends_at) == (label, ends_at)
    assert span.ends_at_ms == int(ends_at.timestamp()) * 1000


def test_to_ms_is_exact_where_float_seconds_are_not() -> None:
    moment = datetime(2026, 11, 27, 23, 59, 59, 999_000, tzinfo=UTC)
    assert to_ms(moment) == 1_795_823_999_999
    assert to_ms(moment + timedelta(milliseconds=1)) == 1_795_824_000_000


def test_a_window_names_its_period() -> None:
    moment = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert (window("DAILY", moment).period, window("MONTHLY", moment).period) == ("DAILY", "MONTHLY")


def test_milliseconds_are_whole_and_truncated_never_a_float() -> None:
    moment = datetime(2026, 11, 27, 0, 0, 0, 1_500, tzinfo=UTC)
    assert to_ms(moment) == to_ms(moment.replace(microsecond=0)) + 1
    assert type(to_ms(moment)) is int


def test_windows_are_utc_whatever_the_hosts_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: most days differ from UTC's there
    time.tzset()
    try:
        moment = datetime(2026, 11, 27, 11, 0, tzinfo=timezone(timedelta(hours=-5)))  # 16:00 UTC
        assert window("DAILY", moment).label == "2026-11-27"
        assert window("DAILY", moment).ends_at == datetime(2026, 11, 28, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()
