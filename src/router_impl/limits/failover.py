"""The shared-to-local limit store failover: a ``LimitStore`` over the shared store (Redis) that
falls back to this process's own store while the shared one is down.

When the shared store fails, an organisation's ``failure_mode`` decides: ``fail_open`` enforces with
the local store (and the readiness check warns), ``fail_closed`` answers 503. The shared store is
tried again after ``retry_seconds``, so recovery is automatic and a dead Redis costs one timeout per
interval, not one per request. ``under(failure_mode)`` gives the store for one organisation's mode;
every such view shares the one retry timer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from router_impl.config.model import FailureMode
from router_impl.errors import ApiError
from router_impl.limits.store import (
    AdmitPlan,
    BucketAdjust,
    BucketProbe,
    CounterAdjust,
    Decision,
    Lease,
    LimitStore,
    LimitStoreUnavailable,
    Snapshot,
)
from router_impl.process_health import CheckStatus

T = TypeVar("T")

log = structlog.get_logger("router.limits")


class _Outage:
    """The shared store's retry timer: down until ``until`` (monotonic seconds), and why."""

    def __init__(self, monotonic: Callable[[], float], retry_seconds: float) -> None:
        self.monotonic = monotonic
        self.retry_seconds = retry_seconds
        self.until = 0.0
        self.reason: str | None = None

    def due(self) -> bool:
        return self.monotonic() >= self.until

    def failed(self, exc: Exception) -> None:
        self.until = self.monotonic() + self.retry_seconds
        if self.reason is None:
            log.error("limits_store_unavailable", error=str(exc)[:200])
        self.reason = type(exc).__name__

    def recovered(self) -> None:
        if self.reason is not None:
            log.info("limits_store_recovered")
            self.reason = None


@dataclass(frozen=True)
class FailoverLimitStore:
    """``LimitStore`` over ``shared`` (None: local only), falling back to ``local`` by ``mode``."""

    local: LimitStore
    shared: LimitStore | None
    outage: _Outage
    mode: FailureMode = "fail_open"

    @classmethod
    def over(
        cls,
        local: LimitStore,
        shared: LimitStore | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        retry_seconds: float = 1.0,
    ) -> FailoverLimitStore:
        return cls(local, shared, _Outage(monotonic, retry_seconds))

    def under(self, mode: FailureMode) -> FailoverLimitStore:
        """This store for an organisation whose ``failure_mode`` is ``mode`` (same retry timer)."""
        return self if mode == self.mode else FailoverLimitStore(self.local, self.shared, self.outage, mode)

    def pinned(self, shared: bool) -> LimitStore:
        """The store that answered a ``run`` (``shared`` as it returned): a settle goes back to it."""
        return self.shared if shared and self.shared is not None else self.local

    async def run(self, op: Callable[[LimitStore], Awaitable[T]]) -> tuple[T, bool]:
        """``op`` on the shared store, or by the failure mode when it is down; and whether it ran
        on the shared store."""
        shared = self.shared
        if shared is not None and self.outage.due():
            try:
                result = await op(shared)
            except LimitStoreUnavailable as exc:
                self.outage.failed(exc)
            else:
                self.outage.recovered()
                return result, True
        if shared is not None and self.mode == "fail_closed":
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "The rate-limit store is unavailable; retry later.",
                headers={"Retry-After": "1"},
            )
        try:
            return await op(self.local), False
        except LimitStoreUnavailable as exc:  # the in-process store is full of live entries
            log.error("limits_local_store_full", error=str(exc)[:200])
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Rate limiting is saturated; retry later.",
                headers={"Retry-After": "1"},
            ) from exc

    # ------------------------------------------------------------------ the LimitStore port

    async def admit(self, plan: AdmitPlan) -> Decision:
        decision, _ = await self.run(lambda store: store.admit(plan))
        return decision

    async def adjust(
        self,
        buckets: tuple[BucketAdjust, ...],
        counters: tuple[CounterAdjust, ...],
        now_ms: int,
        lease: Lease | None = None,
    ) -> None:
        await self.run(lambda store: store.adjust(buckets, counters, now_ms, lease))

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        seen, _ = await self.run(lambda store: store.snapshot(buckets, counter_keys, lockout_key, now_ms))
        return seen

    async def clear(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        cleared, _ = await self.run(lambda store: store.clear(keys))
        return cleared

    async def clear_prefix(self, prefix: str) -> tuple[str, ...]:
        cleared, _ = await self.run(lambda store: store.clear_prefix(prefix))
        return cleared

    # ------------------------------------------------------------------ readiness

    @property
    def degraded(self) -> str | None:
        """Why limits are not being enforced through the shared store, or None."""
        if self.outage.reason is None:
            return None
        return "shared limit store unreachable; fail_open organisations use per-process limits"

    async def readiness(self) -> tuple[CheckStatus, str]:
        if self.shared is None:
            return "pass", "per-process limits (embedded)"
        reason = self.degraded
        return ("warn", reason) if reason else ("pass", "shared limit store reachable")
