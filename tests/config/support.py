"""Helpers for the config tests: reading the next snapshot from a source within a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from router_impl.config.source import Versioned


async def next_snapshot(changes: AsyncIterator[Versioned], within: float = 5.0) -> Versioned:
    return await asyncio.wait_for(anext(changes), within)


async def eventually(condition: Callable[[], bool], within: float = 5.0, step: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)
