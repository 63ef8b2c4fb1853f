"""Wiring of rate limits, budgets and idempotency: Redis when configured, else in process."""

from __future__ import annotations

import time
from collections.abc import Callable

from router_impl.config.model import RuntimeConfig
from router_impl.lifecycle import Lifecycle, every, sync
from router_impl.limits.budget_service import BudgetServiceClient
from router_impl.limits.denials import LimitDenied
from router_impl.limits.idempotency import IdempotencyStore
from router_impl.limits.idempotency_lmdb import LmdbIdempotencyStore
from router_impl.limits.idempotency_memory import MemoryIdempotencyStore
from router_impl.limits.idempotency_redis import RedisIdempotencyStore
from router_impl.limits.owners import OwnerRegistry
from router_impl.limits.service import LimitsService
from router_impl.limits.store import Period
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from router_impl.settings import Settings, secret_value
from router_impl.wiring.shared_redis import SharedRedis


def build_limits(
    settings: Settings,
    lifecycle: Lifecycle,
    redis: SharedRedis | None,
    config: Callable[[], RuntimeConfig],
    on_denied: Callable[[LimitDenied, Period | None], None],
) -> LimitsService:
    """Buckets and budget counters in Redis when configured (this process's own store stands in for
    fail_open organisations while Redis is down), else in process."""
    local = MemoryLimitStore()
    lifecycle.background(every(30, sync(lambda: local.sweep(int(time.time() * 1000)))))
    budget_service: BudgetServiceClient | None = None
    if settings.budget_service_url:
        budget_service = BudgetServiceClient(
            settings.budget_service_url,
            secret_value(settings.budget_service_token) or "",
            timeout=settings.budget_service_timeout_seconds,
            negative_ttl=settings.budget_service_negative_ttl_seconds,
            stale_window=settings.budget_service_stale_window_seconds,
        )
        lifecycle.on_stop(budget_service.close)
    return LimitsService(
        config=config,
        local=local,
        shared=RedisLimitStore(redis.client, scripts=redis.scripts, redis_clock=True) if redis else None,
        budget_service=budget_service,
        default_max_tokens_cap=settings.limits_default_max_tokens_cap,
        lease_seconds=settings.request_timeout_seconds + settings.limits_lease_margin_seconds,
        stream_lease_seconds=settings.limits_stream_lease_seconds,
        on_denied=on_denied,
    )


def build_idempotency(
    settings: Settings, lifecycle: Lifecycle, redis: SharedRedis | None
) -> IdempotencyStore:
    ttl, lease = settings.idempotency_ttl_seconds, settings.idempotency_lease_seconds
    if redis is not None:
        shared = RedisIdempotencyStore(redis.client, ttl, lease, scripts=redis.scripts)
        owners = OwnerRegistry(settings.data_dir / "owners", shared.owner)  # who ran here before us
        lifecycle.on_start(lambda: shared.claim(owners.register()))
        lifecycle.background(shared.keep_alive)
        lifecycle.on_stop(shared.retire)
        lifecycle.on_stop(sync(owners.unregister))
        return shared
    if settings.idempotency_store == "memory":
        return MemoryIdempotencyStore(settings.idempotency_max_entries, ttl, lease)
    store = LmdbIdempotencyStore(
        settings.data_dir / "idempotency", ttl, lease, settings.idempotency_map_size_bytes
    )
    lifecycle.background(every(60, lambda: store.sweep(time.time())))
    lifecycle.on_stop(sync(store.close))
    return store
