"""Soak: a router under a steady request rate for minutes; its RSS must stay flat after warm-up.

Starts `router serve --demo` (one worker) on a free port with the caller's ROUTER_* settings (e.g.
ROUTER_REDIS_URL, ROUTER_KAFKA_BOOTSTRAP, ROUTER_CONFIG_PATH=bench/limits.yaml for the full shared
pipeline), drives it with tools/load.py at --rps for --duration seconds, samples the router's RSS
every --every seconds and reports growth from the end of the warm-up to the end (issue 8: < 10 %).

  .venv/bin/python bench/soak.py --rps 500 --duration 600 [--warmup 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """RSS of the process and its children (uvicorn may fork), from /proc."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def wait_ready(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/status/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"soak: router at {url} not ready within {within:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rps", type=float, default=500)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--every", type=float, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="soak-")
    env = {**os.environ, "ROUTER_DATA_DIR": data_dir, "ROUTER_ACCESS_LOG": "false"}
    router = subprocess.Popen(
        [str(REPO / ".venv/bin/router"), "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(data_dir) / "router.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_ready(url)
        load = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tools/load.py"),
                "--url", url,
                "--api-key", "rk-demo-key",
                "--rps", str(args.rps),
                "--duration", str(args.duration),
                "--concurrency", "64",
                "--slo-p50-ms", "1000",
                "--slo-p95-ms", "5000",
                "--slo-p99-ms", "10000",
                "--json", str(Path(data_dir) / "load.json"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        while load.poll() is None:
            samples.append((round(time.monotonic() - started, 1), rss_kib(router.pid)))
            time.sleep(args.every)
        load_report = json.loads((Path(data_dir) / "load.json").read_text())
    finally:
        router.terminate()
        router.wait(30)
    after_warmup = [kib for at, kib in samples if at >= args.warmup]
    base, end = after_warmup[0], after_warmup[-1]
    growth = (end - base) / base * 100
    report = {
        "rps_target": args.rps,
        "duration_s": args.duration,
        "rss_mib_after_warmup": round(base / 1024, 1),
        "rss_mib_end": round(end / 1024, 1),
        "rss_mib_max": round(max(after_warmup) / 1024, 1),
        "growth_percent": round(growth, 2),
        "load": load_report,
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if growth < 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
