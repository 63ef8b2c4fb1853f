"""Cost of how a limits plan reaches the admit script: client CPU and Redis CPU per admit and settle.

The full plan (4 buckets + 4 counters, leased) runs ``--count`` times, 64 at a time, on the pipelined
connection. Client cost is this process's CPU seconds (not wall time: the machine is shared); Redis's
is the server's CPU seconds (``INFO cpu``) per script call. ``--store FILE`` loads another version of
``store_redis.py`` (e.g. ``git show REV:src/router_impl/limits/store_redis.py > /tmp/old.py``) to
compare two encodings in the same run.

  ROUTER_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/plan_encoding.py [--store /tmp/old.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import time
import uuid
from types import ModuleType

from redis.asyncio import Redis

from router_impl.limits.store import AdmitPlan, BucketAdjust, BucketSpec, CounterAdjust, CounterSpec, Lease
from router_impl.redis_mux import RedisMux


def load(path: str | None) -> ModuleType:
    if path is None:
        from router_impl.limits import store_redis

        return store_redis
    spec = importlib.util.spec_from_file_location("store_redis_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(org: str, now: int) -> AdmitPlan:
    end = now + 86_400_000
    buckets = tuple(
        BucketSpec(f"rl:{{{org}}}:{scope}:{kind}", 1e12, 1000.0, 1.0, scope, kind)  # type: ignore[arg-type]
        for scope in ("org", "key")
        for kind in ("requests", "tokens")
    )
    counters = tuple(
        CounterSpec(f"budget:{{{org}}}:{period}:{unit}", 10**15, 300, end, period, unit)  # type: ignore[arg-type]
        for period in ("DAILY", "MONTHLY")
        for unit in ("tokens", "micro_usd")
    )
    lease = Lease(f"lease:{{{org}}}", f"lease:{{{org}}}:held", uuid.uuid4().hex, now + 60_000)
    return AdmitPlan(f"lockout:{{{org}}}", buckets, counters, now, lease)


async def redis_cpu(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(count: int, store_path: str | None) -> None:
    url = os.environ.get("ROUTER_REDIS_URL", "redis://127.0.0.1:6379/0")
    client, mux = Redis.from_url(url), RedisMux.from_url(url, timeout=5.0)
    store = load(store_path).RedisLimitStore(client, scripts=mux, redis_clock=True)
    orgs = [f"bench-{i}" for i in range(64)]

    async def one(org: str) -> None:
        p = plan(org, int(time.time() * 1000))
        await store.admit(p)
        settle_b = tuple(BucketAdjust(b.key, b.capacity, b.per_ms, 0.0, b.cost) for b in p.buckets)
        settle_c = tuple(CounterAdjust(c.key, -100, c.expires_at_ms, c.amount) for c in p.counters)
        await store.adjust(settle_b, settle_c, p.now_ms, p.lease)

    await asyncio.gather(*(one(org) for org in orgs))  # scripts loaded, connections open
    await client.config_resetstat()
    server_cpu = await redis_cpu(client)
    cpu = time.process_time()
    for _ in range(count // len(orgs)):
        await asyncio.gather(*(one(org) for org in orgs))
    cpu = time.process_time() - cpu
    server_cpu = await redis_cpu(client) - server_cpu
    calls = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    rounds = (count // len(orgs)) * len(orgs)
    print(
        f"{store_path or 'current'}: client CPU {cpu / rounds * 1e6:.1f} us per admit+settle; "
        f"Redis CPU {server_cpu / calls * 1e6:.1f} us per script call ({calls} calls)"
    )
    await mux.aclose()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--store", help="another store_redis.py to measure")
    args = parser.parse_args()
    asyncio.run(run(args.count, args.store))


if __name__ == "__main__":
    main()
