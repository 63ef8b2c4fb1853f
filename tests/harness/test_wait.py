"""The polling helpers of tests/harness/wait.py: a wait that fails at its deadline, and a reading that
is returned as it stands at the deadline."""

from __future__ import annotations

import itertools

import pytest

from tests.harness.wait import WaitTimeout, eventually, last_reading, wait_until


def test_wait_until_returns_the_first_truthy_value_and_fails_at_the_deadline() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "ready", timeout=5, interval=0) == "ready"
    with pytest.raises(WaitTimeout, match=r"waiting for the flag \(last value: 0\)"):
        wait_until(lambda: 0, timeout=0.05, interval=0.01, what="the flag")


async def test_eventually_awaits_a_coroutine_predicate_and_fails_at_the_deadline() -> None:
    counter = itertools.count()

    async def ready() -> bool:
        return next(counter) >= 2

    assert await eventually(ready, timeout=5, interval=0) is True
    with pytest.raises(WaitTimeout, match="the state x"):
        await eventually(lambda: None, timeout=0.05, interval=0.01, what=lambda: "the state x")


def test_last_reading_stops_at_the_first_done_reading_or_returns_the_last_at_the_deadline() -> None:
    counter = itertools.count()
    assert last_reading(lambda: next(counter), lambda n: n == 3, timeout=5, interval=0) == 3
    assert next(counter) == 4  # no reading after the done one
    readings = itertools.count()
    last = last_reading(lambda: next(readings), lambda n: False, timeout=0.05, interval=0.01)
    assert last >= 1 and next(readings) == last + 1  # the deadline's reading, not an earlier one
