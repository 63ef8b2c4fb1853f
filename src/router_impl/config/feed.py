"""The latest snapshot of a source, and followers woken when it changes (coalescing: a slow follower
skips straight to the newest, which is complete by construction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from router_impl.config.source import Versioned


class SnapshotFeed:
    def __init__(self) -> None:
        self.latest: Versioned | None = None
        self._sequence = 0
        self._changed = asyncio.Event()

    def publish(self, snapshot: Versioned) -> None:
        self.latest = snapshot
        self._sequence += 1
        # Wake every current waiter, then give later waiters a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def position(self) -> int:
        return self._sequence

    async def follow(self, since: int) -> AsyncIterator[Versioned]:
        """Snapshots published after ``position`` was ``since``."""
        seen = since
        while True:
            if self._sequence == seen:
                await self._changed.wait()
            seen = self._sequence
            if self.latest is not None:
                yield self.latest
