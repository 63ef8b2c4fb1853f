"""Follows the runtime-config source: the first snapshot at start-up (or the last known good one when
the source is down or invalid), then every change, swapped in atomically, cached and announced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel

from router_impl.config.holder import ConfigHolder
from router_impl.config.layout import assemble, encode, explode, object_key, with_change
from router_impl.config.lkg_cache import CachedSnapshot, LastKnownGood
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigInvalid, ConfigSource, ObjectKind, SourceUnavailable, Versioned
from router_impl.process_health import CheckStatus

OnApply = Callable[[RuntimeConfig], Awaitable[None]]
Overlay = Callable[[RuntimeConfig], RuntimeConfig]


class ConfigUnavailable(RuntimeError):
    """The source gave no snapshot at start-up and no last known good one is cached."""


@dataclass(frozen=True)
class ConfigStatus:
    source: str
    revision: int | None
    applied_at: datetime | None
    rejected: int
    degraded: str | None  # why the router is not serving the source's current config; no hosts


class ConfigService:
    """Owns ``source`` and ``cache`` (``stop`` closes both). ``on_apply`` callbacks run after each swap,
    in order (e.g. the backend client's sessions, the key store's static keys); a failing one is
    logged and does not stop the others. ``overlay`` adds process-local objects (demo mode) to every
    snapshot before the swap."""

    def __init__(
        self,
        source: ConfigSource,
        holder: ConfigHolder,
        cache: LastKnownGood | None,
        *,
        clock: Callable[[], datetime],
        on_apply: Sequence[OnApply] = (),
        overlay: Overlay | None = None,
        retry_delay: float = 1.0,
        log: Any = None,
    ) -> None:
        self._source = source
        self._holder = holder
        self._cache = cache
        self._clock = clock
        self._on_apply = tuple(on_apply)
        self._overlay = overlay
        self._base: RuntimeConfig | None = None  # the source's last snapshot, before the overlay
        self._retry_delay = retry_delay
        self._log = log if log is not None else structlog.get_logger("router.config")
        self._task: asyncio.Task[None] | None = None
        self._degraded: str | None = None
        self._live_revision = 0  # the newest revision applied from the source itself (not the cache)
        self._applied = asyncio.Event()
        self._overlay_rejected = 0
        self.revision: int | None = None
        self.applied_at: datetime | None = None

    @property
    def rejected(self) -> int:
        return self._source.rejected + self._overlay_rejected

    @property
    def degraded(self) -> str | None:
        if self._degraded is not None:
            return self._degraded
        problem = self._source.problem
        if problem is None:
            return None
        since = "" if self.applied_at is None else f" applied at {self.applied_at.isoformat()}"
        return f"{problem}; serving revision {self.revision}{since}"

    def status(self) -> ConfigStatus:
        return ConfigStatus(self._source.name, self.revision, self.applied_at, self.rejected, self.degraded)

    async def readiness(self) -> tuple[CheckStatus, str]:
        """A readiness check: degraded (still serving) while the config is not the source's current one."""
        degraded = self.degraded
        if degraded is not None:
            return "warn", degraded
        config = self._holder.current()
        return "pass", (
            f"{self._source.name} revision {self.revision}: "
            f"{len(config.models)} models, {len(config.backends)} backends"
        )

    async def start(self, within: float) -> None:
        """Apply the source's snapshot, or the cached one if the source cannot answer ``within``
        seconds; then follow changes in the background. Raises ConfigUnavailable."""
        snapshot: Versioned | Exception
        try:
            snapshot = await asyncio.wait_for(self._source.snapshot(), within)
        except (SourceUnavailable, ConfigInvalid, TimeoutError) as exc:
            snapshot = exc
        changes = self._source.changes()  # before any await: no later snapshot can slip past
        if isinstance(snapshot, Versioned):
            await self._apply(snapshot)
        else:
            try:
                await self._serve_cached(snapshot)
            except ConfigUnavailable:
                await self._source.close()
                raise
        self._task = asyncio.create_task(self._follow(changes), name="config-follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._source.close()
        if self._cache is not None:
            self._cache.close()

    async def put(self, kind: ObjectKind, object_id: str, obj: BaseModel, *, wait: float = 2.0) -> int:
        """Write one object through the source (every replica applies it), then wait until this
        replica has applied it, so the admin API reads its own writes. Raises ConfigInvalid,
        ConfigConflict, SourceUnavailable."""
        self._check_overlay(kind, object_id, obj)
        revision = await self._source.put(kind, object_id, obj)
        await self.wait_applied(revision, wait)
        return revision

    async def delete(self, kind: ObjectKind, object_id: str, *, wait: float = 2.0) -> int:
        """As ``put``; raises ObjectNotFound too."""
        self._check_overlay(kind, object_id, None)
        revision = await self._source.delete(kind, object_id)
        await self.wait_applied(revision, wait)
        return revision

    def _check_overlay(self, kind: ObjectKind, object_id: str, obj: BaseModel | None) -> None:
        """Refuse a change the overlay could not sit on (e.g. an object named like demo mode's own):
        the source would accept it, and this replica would then reject every later snapshot."""
        if self._overlay is None or self._base is None:
            return
        value = encode(kind, object_id, obj) if obj is not None else None
        proposed = assemble(with_change(explode(self._base), kind, object_id, value))
        try:
            self._overlay(proposed)
        except ValueError as exc:
            reason = f"conflicts with this replica's process-local objects: {exc}".splitlines()[0]
            raise ConfigInvalid({object_key(kind, object_id): reason}) from exc

    async def wait_applied(self, revision: int, within: float) -> bool:
        """Whether a snapshot at ``revision`` or later was applied ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._live_revision < revision:
            applied = self._applied
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(applied.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def _follow(self, changes: AsyncIterator[Versioned]) -> None:
        while True:
            try:
                async for snapshot in changes:
                    await self._apply(snapshot)
            except Exception:
                self._log.exception("config_follow_failed", source=self._source.name)
            await asyncio.sleep(self._retry_delay)
            changes = self._source.changes()

    async def _serve_cached(self, exc: Exception) -> None:
        what = "config invalid" if isinstance(exc, ConfigInvalid) else "unreachable"
        cached = self._cache.load() if self._cache is not None else None
        if cached is None:
            raise ConfigUnavailable(
                f"{self._source.name} {what} and no last known good config is cached: {exc}"
            ) from exc
        self._swap(cached.snapshot)
        self._degraded = _degraded_reason(self._source.name, what, cached)
        self._log.warning(
            "config_degraded_start",
            source=self._source.name,
            reason=self._degraded,
            error=str(exc) if isinstance(exc, ConfigInvalid) else type(exc).__name__,
        )
        await self._announce()

    async def _apply(self, snapshot: Versioned) -> None:
        if not self._swap(snapshot):
            return
        self._degraded = None
        self._live_revision = max(self._live_revision, snapshot.revision)
        self._applied.set()
        self._applied = asyncio.Event()
        if self._cache is not None and self.applied_at is not None:
            try:
                await asyncio.to_thread(self._cache.save, snapshot, self._source.name, self.applied_at)
            except Exception:
                self._log.exception("config_cache_write_failed")
        await self._announce()

    def _swap(self, snapshot: Versioned) -> bool:
        config = snapshot.config
        self._base = config
        if self._overlay is not None:
            try:
                config = self._overlay(config)
            except ValueError as exc:
                self._overlay_rejected += 1
                self._log.warning(
                    "config_rejected", source="overlay", revision=snapshot.revision, reason=str(exc)
                )
                return False
        self._holder.replace(config)  # one reference assignment: in-flight requests keep their snapshot
        self.revision, self.applied_at = snapshot.revision, self._clock()
        self._log.info(
            "config_applied",
            source=self._source.name,
            revision=snapshot.revision,
            backends=len(config.backends),
            models=len(config.models),
            keys=len(config.api_keys),
        )
        return True

    async def _announce(self) -> None:
        config = self._holder.current()
        for callback in self._on_apply:
            try:
                await callback(config)
            except Exception:
                self._log.exception("config_apply_callback_failed", revision=self.revision)


def _degraded_reason(source: str, what: str, cached: CachedSnapshot) -> str:
    origin = "" if cached.source == source else f" of the {cached.source} source"
    return (
        f"{source} {what}; serving the last known good config from {cached.saved_at.isoformat()} "
        f"(revision {cached.snapshot.revision}{origin})"
    )
