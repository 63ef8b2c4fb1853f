#!/usr/bin/env python3
"""CPU profile shares per pipeline stage from py-spy's raw (collapsed) stacks (`bench/run.py --profile DIR`).

Each sample goes to the stage of its innermost frame that names one (so LMDB work inside the outbox
counts as the outbox, pydantic inside the usage record as the record). Idle thread-pool workers
(py-spy sees a thread blocked in the pool's queue as busy) are counted apart and left out of the shares.

    .venv/bin/python bench/profile_shares.py DIR/router-embedded-c64.txt [...]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (stage, pattern on a frame "function (path:line)"), innermost match wins.
STAGES: list[tuple[str, str]] = [
    (
        "outbox and publisher (LMDB, files, Kafka)",
        r"usage/(outbox|publisher|jsonl|kafka|sink)\.py|confluent_kafka",
    ),
    ("audit event (build, validate, LMDB/Redis)", r"usage/audit"),
    ("usage record (build, validate, JSON)", r"usage/(record|tokens|cost)\.py|_write_usage"),
    ("idempotency (begin, complete)", r"limits/idempotency"),
    ("limits and budgets", r"router_impl/limits/|redis_mux"),
    ("backend call (aiohttp client)", r"routing/backend_|aiohttp/|routing/dispatcher"),
    ("routing engine", r"routing/engine\.py"),
    ("metrics (prometheus-client)", r"prometheus_client|telemetry/metrics"),
    # py-spy names the OTLP exporter's frames by their last path parts (common/_internal/...).
    ("tracing (OpenTelemetry)", r"opentelemetry|telemetry/tracing|trace_exporter|common/_internal|sdk/trace"),
    ("logging (structlog)", r"structlog"),
    ("auth", r"router_impl/auth/"),
    ("pipeline and handlers (own code)", r"router_impl/(pipeline|handlers)"),
    (
        "HTTP server and middlewares (uvicorn, fast lane, request context)",
        r"router_impl/web/|uvicorn/|starlette/|connexion/",
    ),
]
# A thread blocked in its queue or condition (pool workers, the span exporter) is idle, not busy.
_IDLE_WORKER = re.compile(r"^(_worker \(concurrent/futures/thread\.py|Condition\.wait \(threading\.py)")
_COMPILED = [(stage, re.compile(pattern)) for stage, pattern in STAGES]


def shares(path: Path, leaves: Counter[tuple[str, str]] | None = None) -> tuple[Counter[str], int, int]:
    """(samples per stage, busy samples, idle pool-worker samples); `leaves` counts (leaf frame, stage)."""
    counts: Counter[str] = Counter()
    idle = total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the process
        loop = [n for n, frame in enumerate(frames) if frame.startswith("Runner.run (asyncio/runners.py")]
        if loop:  # what runs under the event loop; the frames around it (CLI, uvicorn.run) say nothing
            frames = frames[loop[-1] + 1 :]
        if frames and _IDLE_WORKER.match(frames[-1]):
            idle += int(n)
            continue
        total += int(n)
        stage = _stage(frames)
        counts[stage] += int(n)
        if leaves is not None and frames:
            leaves[frames[-1], stage] += int(n)
    return counts, total, idle


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, pattern in _COMPILED:
            if pattern.search(frame):
                return stage
    return "event loop (uvloop, asyncio) and other"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N innermost frames with most samples"
    )
    args = parser.parse_args()
    for path in args.profiles:
        leaves: Counter[tuple[str, str]] = Counter()
        counts, total, idle = shares(path, leaves)
        print(f"\n{path.name}: {total} busy samples (+{idle} samples of idle worker threads left out)\n")
        print("| stage | share |\n|---|---|")
        for stage, n in counts.most_common():
            print(f"| {stage} | {n / total:.1%} |")
        if args.top:
            print(f"\n| innermost frame (self samples, top {args.top}) | share | stage |\n|---|---|---|")
            for (frame, stage), n in leaves.most_common(args.top):
                print(f"| `{frame}` | {n / total:.1%} | {stage} |")


if __name__ == "__main__":
    main()
