"""Replay protection: remember a signature once for a while. Memory (one process) or Redis (shared)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from router_impl.errors import ApiError

DEFAULT_MAX_ENTRIES = 100_000


class NonceStore(Protocol):
    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        """True the first time ``key`` is seen within ``ttl_seconds``; False for a repeat."""
        ...


class MemoryNonceStore:
    """Bounded by TTL and by ``max_entries``: when full, the oldest nonce is forgotten first.

    Forgetting a live nonce reopens a replay for that one signature; ``evicted_live`` counts
    those so the bound can be raised before it matters. One process only: use Redis with
    several workers or replicas.
    """

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self.evicted_live = 0

    def __len__(self) -> int:
        return len(self._expiry)

    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        now = self._clock()
        self._purge(now)
        expires = self._expiry.get(key)
        if expires is not None and expires > now:
            return False
        self._expiry.pop(key, None)
        self._expiry[key] = now + ttl_seconds
        while len(self._expiry) > self._max_entries:
            _, oldest_expiry = self._expiry.popitem(last=False)
            if oldest_expiry > now:
                self.evicted_live += 1
        return True

    def _purge(self, now: float) -> None:
        # Insertion order is expiry order when every caller uses the same TTL (the verifier does);
        # with mixed TTLs a long-lived head only delays purging, the size bound still holds.
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                return
            del self._expiry[key]


class RedisNonceStore:
    """``SET key 1 NX EX ttl``: atomic across replicas; Redis expires the keys itself.

    Without Redis a replay cannot be ruled out, so signed requests get 503 rather than a pass.
    """

    def __init__(self, client: Redis | RedisCluster, log: Any = None) -> None:
        self._client = client
        self._log = log if log is not None else structlog.get_logger("router.auth")

    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        try:
            return bool(await self._client.set(key, b"1", nx=True, ex=max(1, ttl_seconds)))
        except (RedisError, OSError) as exc:
            self._log.warning("nonce_store_unavailable", reason=type(exc).__name__)
            raise ApiError("SERVICE_UNAVAILABLE", "Replay protection is unavailable; retry shortly.") from exc
