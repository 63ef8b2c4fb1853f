"""The shared-to-local limit store failover, on a real Redis that is stopped and started again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from router_impl.errors import ApiError
from router_impl.limits.failover import FailoverLimitStore
from router_impl.limits.store import AdmitPlan, Admitted, BucketSpec, LimitStore
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from tests.harness.clock import ManualClock
from tests.harness.services import RedisServer
from tests.limits.test_idempotency_stores import redis_client

pytestmark = pytest.mark.services
NOW_MS = 1_800_000_000_000
BUCKET = BucketSpec("rl:{acme}:org:requests", 5.0, 1e-9, 1.0, "org", "requests")
PLAN = AdmitPlan("lockout:{acme}", (BUCKET,), (), NOW_MS)
Stores = tuple[FailoverLimitStore, MemoryLimitStore, ManualClock]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path).start()  # its own server: these tests stop it
    yield server
    server.close()


@pytest.fixture
async def stores(
    redis: RedisServer,
) -> AsyncIterator[Stores]:
    client = redis_client(redis.url)
    local, clock = MemoryLimitStore(), ManualClock()
    yield (
        FailoverLimitStore.over(local, RedisLimitStore(client), monotonic=clock, retry_seconds=1.0),
        local,
        clock,
    )
    await client.aclose()


async def level(store: LimitStore) -> float:
    seen = await store.snapshot((), (), "lockout:{acme}", NOW_MS)
    assert seen.lockout is None
    decision = await store.admit(
        AdmitPlan("lockout:{acme}", (BucketSpec(BUCKET.key, 5.0, 1e-9, 0.0, "org", "requests"),), (), NOW_MS)
    )
    assert isinstance(decision, Admitted)
    return decision.levels[0]


async def test_it_is_a_limit_store_that_answers_from_the_shared_store_while_it_is_up(stores: Stores) -> None:
    failover, local, _ = stores
    port: LimitStore = failover
    assert isinstance(await port.admit(PLAN), Admitted)
    assert await level(failover.pinned(shared=True)) == 4.0
    assert await level(local) == 5.0  # nothing was taken locally
    assert await failover.readiness() == ("pass", "shared limit store reachable")


async def test_fail_open_takes_locally_while_the_shared_store_is_down_and_retries_after_the_interval(
    stores: Stores, redis: RedisServer
) -> None:
    failover, local, clock = stores
    redis.stop()
    decision, shared = await failover.under("fail_open").run(lambda store: store.admit(PLAN))
    assert isinstance(decision, Admitted) and not shared
    assert await level(local) == 4.0
    assert (await failover.readiness())[0] == "warn" and failover.degraded is not None
    redis.start()
    _, shared = await failover.run(lambda store: store.admit(PLAN))
    assert not shared  # within the retry interval the shared store is not tried
    clock.advance(1.0)
    _, shared = await failover.run(lambda store: store.admit(PLAN))
    assert shared and failover.degraded is None


async def test_fail_closed_answers_503_and_every_mode_shares_the_retry_timer(
    stores: Stores, redis: RedisServer
) -> None:
    failover, local, _ = stores
    redis.stop()
    await failover.under("fail_open").admit(PLAN)  # finds the shared store down
    with pytest.raises(ApiError) as refused:
        await failover.under("fail_closed").admit(PLAN)
    assert (refused.value.status_code, refused.value.code) == (503, "SERVICE_UNAVAILABLE")
    assert refused.value.headers["Retry-After"] == "1"
    assert await level(local) == 4.0  # the refused request took nothing


async def test_without_a_shared_store_everything_is_local_and_ready() -> None:
    local = MemoryLimitStore()
    failover = FailoverLimitStore.over(local, None)
    _, shared = await failover.under("fail_closed").run(lambda store: store.admit(PLAN))
    assert not shared and failover.pinned(shared=True) is local
    assert await failover.readiness() == ("pass", "per-process limits (embedded)")
