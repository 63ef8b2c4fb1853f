"""Start-up and shutdown of a router process's resources, in order, undone in reverse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("router.lifecycle")


class Lifecycle:
    def __init__(self) -> None:
        self._starts: list[Callable[[], Awaitable[None]]] = []
        self._stops: list[Callable[[], Awaitable[None]]] = []
        self._loops: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def on_start(self, start: Callable[[], Awaitable[None]]) -> None:
        self._starts.append(start)

    def on_stop(self, stop: Callable[[], Awaitable[None]]) -> None:
        self._stops.append(stop)

    def background(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A task that runs from start-up until shutdown (e.g. a sweep or a poller)."""
        self._loops.append(loop)

    async def start(self) -> None:
        for start in self._starts:
            await start()
        self._tasks = [asyncio.create_task(loop()) for loop in self._loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stop in reversed(self._stops):
            try:
                await stop()
            except Exception:
                log.exception("shutdown_step_failed")


def every(seconds: float, work: Callable[[], Awaitable[object]]) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background loop calling ``work`` every ``seconds``; a failing round is logged, not fatal."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:
                log.exception("background_round_failed")

    return loop


def sync(call: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """A plain call as the coroutine function the hooks take (e.g. a store's ``close``)."""

    async def run() -> None:
        call()

    return run
