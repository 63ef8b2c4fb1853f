"""Client CPU per non-streaming backend call over loopback, the demo upstream in its own process.

Run: .venv/bin/python -m tests.routing.measure_client_cpu [--calls 5000] [--rounds 5] [--loop uvloop]
Prints the median over rounds of process_time / calls (client process only) for the BackendClient
and for bare aiohttp variants, so the wrapper's own cost and each setting's effect are visible.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import uvloop

from router_impl.config.model import BackendConfig
from router_impl.routing.backend_client import BackendClient
from tests.harness.bodies import chat_body

SERVER = """
import asyncio, sys, uvloop
from router_impl.demo.upstream import start_demo_upstream
async def main():
    demo = await start_demo_upstream()
    print(demo.port, flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""
BODY = orjson.dumps(chat_body("demo", "Hello from the benchmark"))
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
Call = Callable[[], Awaitable[object]]
REFERENCE = 2  # bare aiohttp with BackendClient's settings


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server() -> tuple[subprocess.Popen[str], int]:
    pin = ["taskset", "-c", "1"] if (os.cpu_count() or 1) > 1 else []
    proc = subprocess.Popen([*pin, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def measure(variants: list[tuple[str, Call]], calls: int, rounds: int) -> None:
    """Variants take turns within each round, so background load drifts over all of them alike."""
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    wall: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _, call in variants:
        for _ in range(500):
            await call()
    for _ in range(rounds):
        for name, call in variants:
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await call()
            cpu[name].append((time.process_time() - c0) / calls * 1e6)
            wall[name].append((time.perf_counter() - w0) / calls * 1e6)
    reference = cpu[variants[REFERENCE][0]]
    for name, _ in variants:
        median, least = statistics.median(cpu[name]), min(cpu[name])
        # Paired with the reference round by round, so load that drifts between rounds cancels out.
        paired = statistics.median(a - b for a, b in zip(cpu[name], reference, strict=True))
        print(
            f"{name:42s} CPU/call median {median:6.1f} us, min {least:6.1f} us,"
            f" vs bare {paired:+5.1f} us;  wall/call median {statistics.median(wall[name]):6.1f} us",
            flush=True,
        )


async def run(port: int, calls: int, rounds: int) -> None:
    base = f"http://127.0.0.1:{port}/v1"
    url = base + "/chat/completions"
    backend = BackendConfig(id="demo", base_url=base, models=("demo",))
    client = BackendClient(secrets={})
    headers = {"Content-Type": "application/json", "traceparent": TRACEPARENT, "X-Request-ID": "r"}

    async def ours() -> object:
        return await client.post_json(
            backend, "/chat/completions", BODY, traceparent=TRACEPARENT, request_id="r", deadline=None
        )

    async def ours_deadline() -> object:
        return await client.post_json(
            backend,
            "/chat/completions",
            BODY,
            traceparent=TRACEPARENT,
            request_id="r",
            deadline=time.monotonic() + 10,
        )

    lean_headers = {**headers, "Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "r"}

    def bare(session: aiohttp.ClientSession, sent: dict[str, str]) -> Call:
        async def call() -> object:
            async with session.post(url, data=BODY, headers=sent) as response:
                return await response.read()

        return call

    def session(**options: object) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), **options)  # type: ignore[arg-type]

    jar = aiohttp.DummyCookieJar
    as_ours = session(cookie_jar=jar())
    skipping = session(cookie_jar=jar(), skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
    no_decompress = session(cookie_jar=jar(), auto_decompress=False)
    default = aiohttp.ClientSession()
    sessions = (as_ours, skipping, no_decompress, default)
    variants: list[tuple[str, Call]] = [
        ("BackendClient.post_json (parse + checks)", ours),
        ("BackendClient.post_json with a deadline", ours_deadline),
        ("bare aiohttp, BackendClient's settings", bare(as_ours, lean_headers)),
        ("bare aiohttp, skip_auto_headers instead", bare(skipping, headers)),
        ("bare aiohttp, auto_decompress=False", bare(no_decompress, lean_headers)),
        ("bare aiohttp, default ClientSession()", bare(default, headers)),
    ]
    try:
        await measure(variants, calls, rounds)
    finally:
        await client.close()
        for opened in sessions:
            await opened.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    proc, port = start_server()
    try:
        runner = uvloop.run if args.loop == "uvloop" else asyncio.run
        print(f"loop={args.loop} calls={args.calls} rounds={args.rounds} (median of rounds)")
        served = cpu_seconds(proc.pid)
        runner(run(port, args.calls, args.rounds))
        total = (500 + args.calls * args.rounds) * 6  # warm-up + rounds, six variants
        print(
            f"demo upstream (server) CPU per request: {(cpu_seconds(proc.pid) - served) / total * 1e6:.1f} us"
        )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
