"""Wiring of the shared Redis: one client for the occasional command, one pipelined connection for
the per-request scripts; None when ``ROUTER_REDIS_URL`` is not set."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router_impl.lifecycle import Lifecycle
from router_impl.redis_mux import RedisMux
from router_impl.settings import Settings


@dataclass(frozen=True)
class SharedRedis:
    """redis-py for the occasional command; one pipelined connection for the per-request scripts."""

    client: Redis
    scripts: RedisMux


def shared_redis(settings: Settings, lifecycle: Lifecycle) -> SharedRedis | None:
    if not settings.redis_url:
        return None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1),
    )
    scripts = RedisMux.from_url(settings.redis_url, timeout=settings.redis_timeout_seconds)
    redis = SharedRedis(Redis.from_pool(pool), scripts)
    lifecycle.on_stop(redis.client.aclose)
    lifecycle.on_stop(redis.scripts.aclose)
    return redis
