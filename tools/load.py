#!/usr/bin/env python3
"""Load test of a running router at a fixed request rate, with SLO checks.

    python tools/load.py --url http://127.0.0.1:8080 --rps 50 --duration 30     # key from ROUTER_API_KEY

Requests are started on a fixed schedule (open loop: the router's slowness does not slow the offered
load) with at most ``--concurrency`` in flight; a request that finds every slot taken waits, and is
reported as late when it starts more than 100 ms behind its schedule. Latency is measured per request
from sending it to reading the whole answer (the last byte of a stream), so with a fast upstream it is
the router's overhead plus loopback. An error is any transport failure, timeout or non-2xx answer.

SLOs (defaults from SPEC.md: router overhead <= 150 ms median and <= 400 ms p95; error ratio <= 1 %):
``--slo-p50-ms``, ``--slo-p95-ms``, ``--slo-p99-ms`` (off by default), ``--slo-error-rate``.
Exit 0 when every SLO holds, 1 when one fails, 2 when the run could not start.
``--json FILE`` also writes the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

LATE_AFTER_SECONDS = 0.1


@dataclass(frozen=True)
class Outcome:
    latency_s: float
    status: int | None  # None: transport error or timeout
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Report:
    url: str
    endpoint: str
    target_rps: float
    duration_s: float
    concurrency: int
    sent: int = 0
    completed: int = 0
    errors: int = 0
    late_starts: int = 0
    elapsed_s: float = 0.0
    achieved_rps: float = 0.0
    error_rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    slos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(slo["ok"] for slo in self.slos)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def request_body(endpoint: str, model: str, max_tokens: int, stream: bool) -> tuple[str, dict[str, Any]]:
    if endpoint == "inference":
        body = {"request_id": str(uuid.uuid4()), "model": model, "payload": "load test"}
        return "/v1/inference", body
    if endpoint == "completions":
        path, body = "/v1/completions", {"model": model, "prompt": "load test", "max_tokens": max_tokens}
    else:
        messages = [{"role": "user", "content": "load test"}]
        path, body = "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return path, body


async def one_request(
    session: aiohttp.ClientSession, base: str, args: argparse.Namespace, headers: dict[str, str]
) -> Outcome:
    path, body = request_body(args.endpoint, args.model, args.max_tokens, args.stream)
    started = time.perf_counter()
    try:
        async with session.post(base + path, json=body, headers=headers) as response:
            await response.read()  # the whole answer, streams included
            return Outcome(time.perf_counter() - started, response.status)
    except TimeoutError:
        return Outcome(time.perf_counter() - started, None, "timeout")
    except aiohttp.ClientError as exc:
        return Outcome(time.perf_counter() - started, None, type(exc).__name__)


async def resolve_model(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> str:
    async with session.get(base + "/v1/models", headers=headers) as response:
        text = await response.text()
        if response.status != 200:
            raise RuntimeError(f"GET /v1/models answered {response.status}: {text[:300]}")
        models = [m["id"] for m in json.loads(text).get("data") or []]
    if not models:
        raise RuntimeError("GET /v1/models lists no model for this key")
    return models[0]


async def run(args: argparse.Namespace) -> Report:
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    report = Report(base, args.endpoint, args.rps, args.duration, args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        if args.model is None:
            args.model = await resolve_model(session, base, headers)
        slots = asyncio.Semaphore(args.concurrency)
        outcomes: list[Outcome] = []
        late = 0

        async def scheduled(due: float) -> None:
            nonlocal late
            async with slots:
                if time.perf_counter() - due > LATE_AFTER_SECONDS:
                    late += 1
                outcomes.append(await one_request(session, base, args, headers))

        total = max(1, round(args.rps * args.duration))
        interval = 1.0 / args.rps
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for index in range(total):
            due = start + index * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(scheduled(due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return summarize(report, outcomes, late, elapsed, args)


def summarize(
    report: Report, outcomes: list[Outcome], late: int, elapsed: float, args: argparse.Namespace
) -> Report:
    latencies = sorted(o.latency_s * 1000 for o in outcomes)
    report.sent = len(outcomes)
    report.completed = sum(1 for o in outcomes if o.status is not None)
    report.errors = sum(1 for o in outcomes if not o.ok)
    report.late_starts = late
    report.elapsed_s = round(elapsed, 3)
    # the load was offered over --duration; a run that took longer (slow answers) is measured as it ran
    report.achieved_rps = round(len(outcomes) / max(elapsed, args.duration), 2)
    report.error_rate = round(report.errors / len(outcomes), 5) if outcomes else 1.0
    report.latency_ms = {
        "min": round(latencies[0], 2) if latencies else 0.0,
        "p50": round(percentile(latencies, 0.50), 2),
        "p95": round(percentile(latencies, 0.95), 2),
        "p99": round(percentile(latencies, 0.99), 2),
        "max": round(latencies[-1], 2) if latencies else 0.0,
        "mean": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
    }
    report.statuses = {str(k): v for k, v in sorted(Counter(o.status for o in outcomes if o.status).items())}
    report.error_kinds = dict(Counter(o.error for o in outcomes if o.error))
    checks = [
        ("latency p50", report.latency_ms["p50"], args.slo_p50_ms, "ms"),
        ("latency p95", report.latency_ms["p95"], args.slo_p95_ms, "ms"),
        ("latency p99", report.latency_ms["p99"], args.slo_p99_ms, "ms"),
        ("error rate", report.error_rate, args.slo_error_rate, ""),
    ]
    report.slos = [
        {"name": name, "value": value, "limit": limit, "unit": unit, "ok": value <= limit}
        for name, value, limit, unit in checks
        if limit is not None
    ]
    return report


def render(report: Report) -> str:
    lat = report.latency_ms
    lines = [
        f"load test: {report.url} {report.endpoint}, target {report.target_rps:g} RPS for "
        f"{report.duration_s:g} s, concurrency {report.concurrency}",
        f"  requests   {report.sent} sent, {report.completed} answered, {report.errors} errors "
        f"({report.error_rate:.2%}); statuses {report.statuses or '{}'}"
        + (f"; failures {report.error_kinds}" if report.error_kinds else ""),
        f"  throughput {report.achieved_rps:g} RPS achieved over {report.elapsed_s:g} s"
        + (f" ({report.late_starts} requests started >100 ms late)" if report.late_starts else ""),
        f"  latency    p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms, mean {lat['mean']:.1f} ms",
    ]
    for slo in report.slos:
        verdict = "PASS" if slo["ok"] else "FAIL"
        if slo["unit"] == "ms":
            lines.append(f"  SLO {verdict}  {slo['name']} {slo['value']:.1f} ms (limit {slo['limit']:g} ms)")
        else:
            lines.append(f"  SLO {verdict}  {slo['name']} {slo['value']:.2%} (limit {slo['limit']:.2%})")
    lines.append("SLOs met" if report.passed else "SLO breached")
    return "\n".join(lines)


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ROUTER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("ROUTER_API_KEY"), help="default: ROUTER_API_KEY")
    parser.add_argument("--model", help="default: the first model /v1/models lists for the key")
    parser.add_argument("--endpoint", choices=["chat", "completions", "inference"], default="chat")
    parser.add_argument("--stream", action="store_true", help="streamed answers (chat, completions)")
    parser.add_argument("--max-tokens", type=positive(int), default=16)
    parser.add_argument("--rps", type=positive(float), default=50.0, help="target requests per second")
    parser.add_argument("--duration", type=positive(float), default=10.0, help="seconds of load")
    parser.add_argument("--concurrency", type=positive(int), default=64, help="max requests in flight")
    parser.add_argument("--timeout", type=positive(float), default=30.0, help="seconds per request")
    parser.add_argument("--slo-p50-ms", type=positive(float), default=150.0)
    parser.add_argument("--slo-p95-ms", type=positive(float), default=400.0)
    parser.add_argument("--slo-p99-ms", type=positive(float), default=None)
    parser.add_argument("--slo-error-rate", type=float, default=0.01, help="max error ratio (0.01 = 1 %%)")
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key with scope inference is needed (--api-key or ROUTER_API_KEY)")
    if args.stream and args.endpoint == "inference":
        parser.error("--stream works with --endpoint chat or completions")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except (RuntimeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"load: cannot start against {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    print(render(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(report) | {"passed": report.passed}, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
