"""The shared stores on a real Redis Cluster (three masters): limits, budgets, idempotency and nonces
run unchanged, every multi-key script keeping its keys in one hash slot (the organisation's ``{org}``),
on redis-py's cluster client and on the router's pipelined ``ClusterMux``.

The audit index runs on the cluster in tests/usage/test_audit_stores.py; routers on the cluster and a
failover under load in tests/e2e/test_redis_cluster_fleet.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from redis import Redis as SyncRedis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from router_impl.auth.nonces import RedisNonceStore
from router_impl.limits.idempotency import Conflict, Proceed, Replay, StoredReply
from router_impl.limits.idempotency_redis import RedisIdempotencyStore
from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketSpec,
    CounterAdjust,
    CounterSpec,
    Lease,
)
from router_impl.limits.store_redis import RedisLimitStore
from router_impl.redis_cluster_mux import ClusterMux
from router_impl.redis_mux import RedisAddress
from tests.harness.redis_cluster import RedisClusterServer
from tests.limits.test_limit_store_parity import World, decide_alike, operations, worlds

pytestmark = pytest.mark.services


@pytest.fixture
async def client(redis_cluster: RedisClusterServer) -> AsyncIterator[RedisCluster]:
    redis = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    await redis.initialize()
    yield redis
    await redis.aclose()


def orgs_on_every_master(count: int = 30) -> list[str]:
    return [f"org-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]


@pytest.fixture
async def mux(redis_cluster: RedisClusterServer) -> AsyncIterator[ClusterMux]:
    seeds = [RedisAddress(host, port) for host, port in redis_cluster.startup_nodes[:1]]
    scripts = ClusterMux(seeds, timeout=2.0, connect_timeout=2.0)
    yield scripts
    await scripts.aclose()


@pytest.mark.parametrize("pipelined", [False, True], ids=["redis-py", "cluster-mux"])
async def test_limits_and_budgets_run_on_the_cluster_exactly(
    client: RedisCluster, mux: ClusterMux, pipelined: bool
) -> None:
    store = RedisLimitStore(client, scripts=mux if pipelined else None, redis_clock=True)
    now = int(time.time() * 1000)
    day_end = now + 86_400_000
    orgs = orgs_on_every_master()
    masters = {client.get_node_from_key(f"rl:{{{org}}}:org:requests").name for org in orgs}
    assert len(masters) == 3, masters  # the organisations' slots are spread over every master
    for org in orgs:
        bucket = BucketSpec(f"rl:{{{org}}}:org:requests", 5.0, 1e-9, 1.0, "org", "requests")
        budget = CounterSpec(f"budget:{{{org}}}:DAILY:tokens", 30, 10, day_end, "DAILY", "tokens")
        lease = Lease(f"lease:{{{org}}}", f"lease:{{{org}}}:held", uuid.uuid4().hex, now + 60_000)
        plan = AdmitPlan(f"lockout:{{{org}}}", (bucket,), (budget,), now, lease)
        decisions = await asyncio.gather(*(store.admit(plan) for _ in range(8)))
        assert sum(isinstance(d, Admitted) for d in decisions) == 3  # 30 tokens, 10 each
        assert await client.get(budget.key) == b"30"
        settle = CounterAdjust(budget.key, -4, day_end, 10)  # one request used 6 of its 10
        await store.adjust((BucketAdjust(bucket.key, 5.0, 1e-9, 0.0, 1.0),), (settle,), now, lease)
        assert await client.get(budget.key) == b"26"
    # An admin reset finds an organisation's keys on whichever master holds them (SCAN on every master).
    cleared = await store.clear_prefix(f"budget:{{{orgs[0]}}}:")
    assert cleared == (f"budget:{{{orgs[0]}}}:DAILY:tokens",)
    assert await store.clear((f"rl:{{{orgs[1]}}}:org:requests",)) == (f"rl:{{{orgs[1]}}}:org:requests",)


async def test_idempotency_and_nonces_run_on_the_cluster(client: RedisCluster, mux: ClusterMux) -> None:
    store = RedisIdempotencyStore(client, owner="host.1.1", scripts=mux)
    other = RedisIdempotencyStore(client, owner="host.2.2")
    await store.claim([])
    nonces = RedisNonceStore(client)  # type: ignore[arg-type]
    now = time.time()
    for org in orgs_on_every_master():
        began = await store.begin(org, "req-1", "fp", now)
        assert isinstance(began, Proceed)
        assert await other.begin(org, "req-1", "fp", now) == Conflict("REQUEST_IN_PROGRESS")
        assert await store.complete(org, "req-1", began.token, StoredReply(200, b"ok", "text/plain"), now)
        assert await other.begin(org, "req-1", "fp", now) == Replay(StoredReply(200, b"ok", "text/plain"))
        assert await nonces.first_use(f"nonce:{org}", 60)
        assert not await nonces.first_use(f"nonce:{org}", 60)
    # A dead owner's entry is taken over on the cluster too (the owner key lives in another slot).
    held = await other.begin("org-crash", "req", "fp", now)
    assert isinstance(held, Proceed)
    assert isinstance(await store.begin("org-crash", "req", "fp", now), Proceed)  # host.2.2 never beat


async def test_a_script_whose_keys_span_slots_is_refused_by_the_cluster(mux: ClusterMux) -> None:
    """What the {org} hash tags prevent: Redis Cluster refuses a script naming keys of two slots."""
    script = mux.register_script("return redis.call('GET', KEYS[2])")
    with pytest.raises(ResponseError, match="CROSSSLOT"):
        await script(keys=["a{org-1}", "b{org-2}"])
    assert await script(keys=["a{org-1}", "b{org-1}"]) is None


@pytest.fixture(scope="module")
async def cluster_store(redis_cluster: RedisClusterServer) -> AsyncIterator[RedisLimitStore]:
    """On the router's pipelined ClusterMux (module scope: hypothesis runs every example on it)."""
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    scripts = ClusterMux([RedisAddress(*redis_cluster.startup_nodes[0])], timeout=2.0, connect_timeout=2.0)
    yield RedisLimitStore(client, scripts=scripts)
    await scripts.aclose()
    await client.aclose()


@settings(max_examples=100)
@given(world=worlds, ops=operations)
async def test_the_cluster_store_decides_exactly_as_the_embedded_one(
    cluster_store: RedisLimitStore, world: World, ops: list[tuple[object, ...]]
) -> None:
    await decide_alike(cluster_store, world, ops)


async def test_a_slot_in_migration_is_followed_through_ask(
    redis_cluster: RedisClusterServer, client: RedisCluster, mux: ClusterMux
) -> None:
    """While a slot migrates, a key the old master no longer has is answered with ASK: the mux resends
    it to the importing master, preceded by ASKING, and nothing else changes."""
    key = f"ask-{uuid.uuid4().hex}"
    slot = client.keyslot(key)
    source = client.get_node_from_key(key)
    target = next(n for n in client.get_primaries() if n.name != source.name)
    source_id, target_id = (
        redis_cluster.cli_run(n.port, "cluster", "myid").strip() for n in (source, target)
    )
    script = mux.register_script("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])")
    assert "OK" in redis_cluster.cli_run(target.port, "cluster", "setslot", str(slot), "importing", source_id)
    assert "OK" in redis_cluster.cli_run(source.port, "cluster", "setslot", str(slot), "migrating", target_id)
    importing = SyncRedis(port=target.port, single_connection_client=True)
    try:
        assert await script(keys=[key], args=["moved-on"]) == b"moved-on"
        assert redis_cluster.cli_run(source.port, "get", key).startswith("ASK")  # not on the old master
        importing.execute_command("ASKING")
        assert importing.get(key) == b"moved-on"  # written where the slot is going
    finally:
        importing.execute_command("ASKING")
        importing.delete(key)
        importing.close()
        for node in (source, target):
            redis_cluster.cli_run(node.port, "cluster", "setslot", str(slot), "stable")
