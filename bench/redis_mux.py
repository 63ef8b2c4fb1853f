"""Client CPU per Redis script call: redis-py's pooled client against the pipelined connection.

Both run the limits store's admit (4 buckets + 4 counters, the plan of bench/limits.yaml) from
``--concurrency`` tasks at once, in one process, against the same loopback Redis, in the same run;
CPU is this process's (``time.process_time``), so Redis's own work is not in it.

  ROUTER_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/redis_mux.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from router_impl.limits.store import AdmitPlan, BucketSpec, CounterSpec
from router_impl.limits.store_redis import RedisLimitStore
from router_impl.redis_mux import RedisMux

Call = Callable[[], Awaitable[Any]]


def admit_call(store: RedisLimitStore) -> Call:
    """One organisation's full plan: org and key buckets for requests and tokens, daily and
    monthly budgets in tokens and micro-dollars (never exhausted, so every call admits)."""
    org = f"{{bench-{uuid.uuid4().hex}}}"
    now = int(time.time() * 1000)
    buckets = tuple(
        BucketSpec(f"rl:{org}:{scope}:{kind}", 1e12, 1e6, 1.0, scope, kind)
        for scope in ("org", "key")
        for kind in ("requests", "tokens")
    )
    counters = tuple(
        CounterSpec(f"budget:{org}:{period}:{unit}", 10**15, 1, now + 86_400_000, period, unit)
        for period in ("DAILY", "MONTHLY")
        for unit in ("tokens", "micro_usd")
    )

    def call() -> Awaitable[Any]:
        return store.admit(AdmitPlan(f"lockout:{org}", buckets, counters, int(time.time() * 1000)))

    return call


async def measure(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(calls per second, client CPU µs per call)."""
    for _ in range(200):
        await call()
    per_task = calls // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_task * concurrency
    return done / (time.perf_counter() - wall), (time.process_time() - cpu) / done * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ROUTER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    pool = BlockingConnectionPool.from_url(args.redis_url, max_connections=64, timeout=5)
    client = Redis.from_pool(pool)
    mux = RedisMux.from_url(args.redis_url, timeout=5.0)
    try:
        rows = {
            "redis-py (pool of 64)": await measure(
                admit_call(RedisLimitStore(client)), args.calls, args.concurrency
            ),
            "pipelined (redis_mux)": await measure(
                admit_call(RedisLimitStore(client, scripts=mux)), args.calls, args.concurrency
            ),
        }
    finally:
        await client.aclose()
        await mux.aclose()
    base = rows["redis-py (pool of 64)"][1]
    print(f"RedisLimitStore.admit, {args.calls} calls from {args.concurrency} tasks")
    print(f"{'client':24s} {'calls/s':>9s} {'CPU µs/call':>12s} {'CPU ratio':>10s}")
    for name, (rate, cpu) in rows.items():
        print(f"{name:24s} {rate:9.0f} {cpu:12.1f} {cpu / base:10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
