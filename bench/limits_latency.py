"""Latency of one rate-limit + budget decision (admit) and its settle, against loopback Redis.

The plan is the full one (organisation and key buckets for requests and tokens, daily and monthly
budgets in tokens and USD: 4 buckets + 4 counters) from bench/limits.yaml. The baseline in the
same run is a Redis PING on the same client, so the figure is what the decision adds to a round
trip. The end-to-end view (router with and without limits, same run) is
`bench/run.py --variant redis,redis-limits`.

  ROUTER_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/limits_latency.py [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from decimal import Decimal
from pathlib import Path

import yaml
from redis.asyncio import Redis

from router_impl.config.model import ModelPricing, RuntimeConfig
from router_impl.limits.service import Demand, LimitsService
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore

HERE = Path(__file__).resolve().parent
PRICING = ModelPricing(input_usd_per_1m_tokens=Decimal("0.2"), output_usd_per_1m_tokens=Decimal("0.6"))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered),
        ordered[int(len(ordered) * 0.99) - 1],
        ordered[int(len(ordered) * 0.999) - 1],
    )


async def measure(url: str, count: int) -> None:
    config = RuntimeConfig.model_validate(yaml.safe_load((HERE / "limits.yaml").read_text()))
    redis = Redis.from_url(url)
    shared = RedisLimitStore(redis)
    service = LimitsService(config=lambda: config, local=MemoryLimitStore(), shared=shared)
    demand = Demand("demo-org", "demo-key", prompt_tokens=12, max_tokens=64, pricing=PRICING)
    ping: list[float] = []
    admit: list[float] = []
    settle: list[float] = []
    for _ in range(count // 10):  # warm-up: scripts loaded, connections open
        ticket = await service.admit(demand)
        assert ticket is not None
        await service.settle(ticket, 40, 20)
    for _ in range(count):
        started = time.perf_counter()
        await redis.ping()
        ping.append(time.perf_counter() - started)
        started = time.perf_counter()
        ticket = await service.admit(demand)
        admit.append(time.perf_counter() - started)
        assert ticket is not None and ticket.shared
        started = time.perf_counter()
        await service.settle(ticket, 40, 20)
        settle.append(time.perf_counter() - started)
    await redis.aclose()
    print(f"{count} decisions, loopback Redis, one client (ms):")
    print(f"{'':14}{'p50':>8}{'p99':>8}{'p99.9':>8}")
    for name, samples in (("PING", ping), ("admit", admit), ("settle", settle)):
        p50, p99, p999 = (v * 1000 for v in percentiles(samples))
        print(f"{name:14}{p50:8.3f}{p99:8.3f}{p999:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--redis-url", default=os.environ.get("ROUTER_REDIS_URL"))
    args = parser.parse_args()
    if not args.redis_url:
        parser.error("set ROUTER_REDIS_URL or --redis-url (make dev-up starts one)")
    asyncio.run(measure(args.redis_url, args.count))


if __name__ == "__main__":
    main()
