"""Abuse protection for the unauthenticated endpoints (health, readiness, metrics): a token bucket
per client address, far above what kubelet probes and Prometheus scrapes need. Over it: 429
``RATE_LIMIT_EXCEEDED`` with ``Retry-After``. The buckets are the limit store's in-process adapter
(bounded: when it is full of live clients, requests are let through rather than refused)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from router_impl.errors import ApiError
from router_impl.limits.store import AdmitPlan, BucketRefused, BucketSpec, LimitStoreUnavailable
from router_impl.limits.store_memory import MemoryLimitStore


class ProbeGuard:
    def __init__(
        self,
        *,
        per_second: float = 20.0,
        burst: int = 40,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_ms = per_second / 1000
        self.burst = float(burst)
        self.clock = clock
        self.store = MemoryLimitStore(max_entries=max_clients)

    async def check(self, client: str) -> None:
        """Passes, or raises 429 when ``client`` (the peer's address) is over its bucket."""
        bucket = BucketSpec(f"probe:{client}", self.burst, self.per_ms, 1.0, "key", "requests")
        plan = AdmitPlan("probe:lockout", (bucket,), (), int(self.clock() * 1000))
        try:
            decision = await self.store.admit(plan)
        except LimitStoreUnavailable:
            return  # full of live clients: serving a cheap probe beats refusing a real one
        if isinstance(decision, BucketRefused):
            wait = max(1, math.ceil((1.0 - decision.level) / self.per_ms / 1000))
            raise ApiError(
                "RATE_LIMIT_EXCEEDED",
                "Too many health or metrics requests from this client; slow down.",
                headers={"Retry-After": str(wait)},
            )
