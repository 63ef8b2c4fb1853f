"""Wiring of the shared Redis (one server or a Redis Cluster): one client for the occasional command,
pipelined connections for the per-request scripts; None when ``ROUTER_REDIS_URL`` is not set."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from router_impl.lifecycle import Lifecycle
from router_impl.redis_cluster_mux import ClusterMux
from router_impl.redis_mux import RedisAddress, RedisMux
from router_impl.settings import Settings


@dataclass(frozen=True)
class SharedRedis:
    """redis-py for the occasional command; one pipelined connection (per master of a Redis Cluster)
    for the per-request scripts."""

    client: Redis | RedisCluster
    scripts: RedisMux | ClusterMux

    async def ping(self) -> object:
        """Readiness's PING: on a Redis Cluster every master of the request path's current slot map
        must answer (one that does not fails the requests of the organisations whose slots it holds;
        redis-py's own view of the masters may predate a failover)."""
        if isinstance(self.scripts, ClusterMux):
            await self.scripts.ping()
            return True
        return await self.client.ping()


def shared_redis(settings: Settings, lifecycle: Lifecycle) -> SharedRedis | None:
    if not settings.redis_url:
        return None
    redis = (
        _redis_cluster(settings) if settings.redis_cluster else _redis_server(settings, settings.redis_url)
    )
    lifecycle.on_stop(redis.client.aclose)
    lifecycle.on_stop(redis.scripts.aclose)
    return redis


def _redis_server(settings: Settings, url: str) -> SharedRedis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1),
    )
    scripts = RedisMux.from_url(url, timeout=settings.redis_timeout_seconds)
    return SharedRedis(Redis.from_pool(pool), scripts)


def _redis_cluster(settings: Settings) -> SharedRedis:
    """The seeds' credentials and TLS serve every node; redis-py follows MOVED and failovers itself."""
    seeds = [RedisAddress.from_url(url) for url in settings.redis_urls]
    first = seeds[0]
    client = RedisCluster(
        startup_nodes=[ClusterNode(seed.host, seed.port) for seed in seeds],
        username=first.username,
        password=first.password,
        ssl=first.tls,
        ssl_cert_reqs="required" if first.verify_tls else "none",
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 1),
    )
    timeout = settings.redis_timeout_seconds
    return SharedRedis(client, ClusterMux(seeds, timeout=timeout, connect_timeout=timeout))
