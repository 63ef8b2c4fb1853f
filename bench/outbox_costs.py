#!/usr/bin/env python3
"""What one outbox append costs with and without fsync, alone and group-committed (issue 20, lever 2):
CPU and wall microseconds per append of a 600-byte record, in process, on this machine's disk.

    .venv/bin/python bench/outbox_costs.py [--dir DIR]   # DIR on the disk to judge (default: a temp dir)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from router_impl.usage.outbox import LmdbOutbox


async def measure(path: Path, sync: bool, concurrency: int, appends: int) -> tuple[float, float, int]:
    outbox = LmdbOutbox(path, max_bytes=1 << 30, sync=sync)
    value = b"x" * 600
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(appends // concurrency):
        await asyncio.gather(*(outbox.append("usage.records.v1", b"org", value) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    commits = outbox.commits
    await outbox.close()
    done = appends // concurrency * concurrency
    return cpu / done * 1e6, wall / done * 1e6, commits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="outbox-costs-"))
    print("| durability | concurrent appends | CPU µs / append | wall µs / append | commits |")
    print("|---|---|---|---|---|")
    for sync in (False, True):
        for concurrency in (1, 64):
            appends = 300 if sync and concurrency == 1 else 3008
            path = root / f"outbox-{sync}-{concurrency}"
            cpu, wall, commits = asyncio.run(measure(path, sync, concurrency, appends))
            mode = "machine (fsync)" if sync else "process"
            print(f"| {mode} | {concurrency} | {cpu:.1f} | {wall:.1f} | {commits} |")


if __name__ == "__main__":
    main()
