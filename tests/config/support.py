"""Helpers for the config tests: reading the next snapshot from a source within a deadline (waiting
for anything else is ``tests.harness.wait.eventually``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from router_impl.config.source import Versioned


async def next_snapshot(changes: AsyncIterator[Versioned], within: float = 5.0) -> Versioned:
    return await asyncio.wait_for(anext(changes), within)
