"""Waiting for something to become true: poll a predicate until it holds, and FAIL at the deadline.

``wait_until`` blocks (for tests driving subprocesses and threads); ``eventually`` awaits (for tests
on the event loop, which keeps running while it waits; its predicate may also be a coroutine
function). Both return the predicate's first truthy value, so ``record = wait_until(lambda:
find(...))`` waits and fetches in one step. ``last_reading`` returns the last reading at the deadline
instead, for a caller whose own assertion on it says more than a timeout would.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_INTERVAL_S = 0.02
# Polling the unauthenticated probes (/v1/status/*, /metrics): the router's probe guard lets one client
# make 20 a second (burst 40) and answers 429 past that, so a poll at the default interval for more
# than a second or two reads its own refusals.
PROBE_INTERVAL_S = 0.1


class WaitTimeout(AssertionError):
    """The predicate did not hold by the deadline (an AssertionError: the test fails, never skips)."""


def _timed_out(what: str | Callable[[], str], timeout: float, last: object) -> WaitTimeout:
    """``what`` may be a function, to describe the state at the deadline."""
    said = what() if callable(what) else what
    return WaitTimeout(f"timed out after {timeout} s waiting for {said} (last value: {last!r:.300})")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)


def last_reading(
    read: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = DEFAULT_INTERVAL_S
) -> T:
    """Poll ``read`` until ``done(reading)`` holds: that reading, or the last one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], T] | Callable[[], Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """``wait_until`` for the event loop: awaits between polls so other tasks keep running."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        await asyncio.sleep(interval)
