"""The audit query's date-times: an offset that leaves the calendar is clamped to its edge, not a 400."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router_impl.errors import ApiError
from router_impl.handlers.audit import _date_time


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("0001-01-01T01:00:00+04:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:00:00-04:00", datetime.max.replace(tzinfo=UTC)),
        ("2026-01-01T00:30:00+01:00", datetime(2025, 12, 31, 23, 30, tzinfo=UTC)),
    ],
)
def test_a_schema_valid_date_time_is_read_as_its_utc_instant_or_the_calendars_edge(value, instant):
    assert _date_time(value, "since") == instant


def test_what_is_not_a_date_time_is_refused():
    with pytest.raises(ApiError):
        _date_time("2026-13-01T00:00:00Z", "since")
