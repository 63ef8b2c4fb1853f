"""Limits fixtures: every limit-store adapter (memory, real Redis), a fresh organisation per test, and
the limits service built on the in-process store or on Redis (``service``), and budget-service
clients (``make_client``) of a mock budget service (``budget_service``) on a manual clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from router_impl.config.model import OrgLimits, RuntimeConfig
from router_impl.limits.budget_service import BudgetServiceClient
from router_impl.limits.service import LimitsService
from router_impl.limits.store import LimitStore
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.budget_service import MockBudgetService
from tests.harness.clock import ManualClock, WallClock
from tests.harness.limit_plans import Org
from tests.harness.services import RedisServer
from tests.limits.limits_service_support import NOON, Factory
from tests.limits.test_idempotency_stores import redis_client


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield MemoryLimitStore()
    else:
        client = redis_client(request.getfixturevalue("redis_server").url)
        yield RedisLimitStore(client)
        await client.aclose()


@pytest.fixture
def org() -> Org:
    return Org(f"org-{uuid.uuid4().hex}")


@pytest.fixture(params=["memory", "redis"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds a LimitsService whose store is in process, or Redis (a database of its own, emptied)."""
    redis: Redis | None = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis = Redis.from_url(server.url.rsplit("/", 1)[0] + "/13")
        await redis.flushdb()

    def make(
        limits: dict[str, OrgLimits],
        *,
        clock: WallClock | None = None,
        shared: MemoryLimitStore | None = None,
        budget_service: Any = None,
        monotonic: Callable[[], float] | None = None,
        **options: Any,
    ) -> LimitsService:
        config = RuntimeConfig(org_limits=limits)
        store: Any = shared if shared is not None else (RedisLimitStore(redis) if redis is not None else None)
        return LimitsService(
            config=lambda: config,
            local=MemoryLimitStore(),
            shared=store,
            budget_service=budget_service,
            now=clock or WallClock(NOON),
            monotonic=monotonic or ManualClock(),
            **options,
        )

    yield make
    if redis is not None:
        await redis.aclose()


@pytest.fixture
def budget_service() -> Iterator[MockBudgetService]:
    with MockBudgetService() as service:
        yield service


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_client(budget_service: MockBudgetService, clock: ManualClock):
    clients = []

    def make(token: str | None = None, **overrides) -> BudgetServiceClient:
        options = {
            # Generous: the service is a thread of this process, and a busy machine once took
            # more than 0.5 s over a healthy first call. Tests of a hang set their own.
            "timeout": 10.0,
            "negative_ttl": 5,
            "stale_window": 900,
            "max_entries": 1000,
            "monotonic": clock,
        } | overrides
        client = BudgetServiceClient(budget_service.base_url, token or budget_service.token, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
