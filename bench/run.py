"""One-command benchmark: fake upstream direct, thin aiohttp proxy, the router (variants), LiteLLM (optional).

Everything is started here, on loopback, measured with wrk at each concurrency in the same run, and
stopped again (process groups), also on Ctrl-C or failure. See bench/README.md.
  .venv/bin/python bench/run.py [--duration 10] [--conc 1,64,256] [--variant embedded,redis]
      [--router-env KEY=VALUE ...] [--stream] [--idempotency] [--litellm-venv PATH]
      [--json out.json] [--markdown bench/README.md]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from procs import cpu_seconds, rss_mib
from report import Row, add_comparisons, append_markdown, failures, pick_medians, text_table, write_json
from targets import (
    HERE,
    REPO,
    ROUTER_VARIANTS,
    Target,
    start_litellm,
    start_router,
    start_thin_proxy,
    start_upstream,
)
from upstream import DEFAULT_STREAM_CHUNKS
from wrkrun import WrkRunner

TARGET_KINDS = ("direct", "thin-proxy", "router", "litellm")


def _csv_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (10)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds before each row (2; 0 = none)"
    )
    parser.add_argument("--conc", type=_csv_ints, default=[1, 64, 256], help="wrk connections (1,64,256)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; report the median-RPS sample (1)")
    parser.add_argument(
        "--targets",
        default="direct,thin-proxy,router,litellm",
        help="subset of direct,thin-proxy,router,litellm (litellm only with --litellm-venv)",
    )
    parser.add_argument(
        "--variant",
        default="embedded",
        help="router variants, comma-separated: "
        + "; ".join(f"{k} = {v.description}" for k, v in ROUTER_VARIANTS.items()).replace("%", "%%"),
    )
    parser.add_argument(
        "--router-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra router env",
    )
    parser.add_argument(
        "--router-workers",
        type=_csv_ints,
        default=[1],
        help="router worker processes (1); a list (1,2) runs each variant with each (router:<variant>@w<N>)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run each variant from this checkout (`git archive main`), as router:<variant>@base",
    )
    parser.add_argument(
        "--router-bin",
        type=Path,
        action="append",
        default=[],
        help="default: <repo>/.venv/bin/router; given more than once (another venv each, e.g. "
        ".venv-3.12/bin/router), each variant runs from each, as router:<variant>@py<X.Y>",
    )
    parser.add_argument(
        "--litellm-venv", type=Path, default=None, help="a venv with `litellm[proxy]` installed"
    )
    parser.add_argument("--stream", action="store_true", help='"stream": true (bench/chat_stream.lua)')
    parser.add_argument(
        "--stream-chunks",
        type=int,
        default=DEFAULT_STREAM_CHUNKS,
        help=f"chunk events per streamed answer ({DEFAULT_STREAM_CHUNKS}: the role, six words, the finish "
        "reason); CPU µs per chunk is reported",
    )
    parser.add_argument(
        "--stream-gap-ms",
        type=float,
        default=0.0,
        help="ms between the upstream's stream events (0: the whole stream in one write)",
    )
    parser.add_argument("--idempotency", action="store_true", help="a unique Idempotency-Key per request")
    parser.add_argument("--upstream-delay-ms", type=float, default=0.0)
    parser.add_argument("--upstream-cpus", default="1", help="taskset list for the fake upstream (1)")
    parser.add_argument("--wrk-cpus", default="0", help="taskset list for wrk (0)")
    parser.add_argument(
        "--server-cpus", default=None, help="taskset list for the servers under test (unpinned)"
    )
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="append a dated section to this markdown file"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with server logs")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy each measured router row into DIR/<target>-c<N>.txt (collapsed stacks, 100 Hz)",
    )
    args = parser.parse_args(argv)
    args.targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = set(args.targets) - set(TARGET_KINDS)
    args.variants = [name.strip() for name in args.variant.split(",") if name.strip()]
    unknown |= set(args.variants) - set(ROUTER_VARIANTS)
    if unknown:
        parser.error(f"unknown target or variant: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if args.stream_chunks < 2:
        parser.error("--stream-chunks must be at least 2 (the role and the finish reason)")
    return args


@dataclass(frozen=True)
class Pinning:
    upstream: str | None
    wrk: str | None
    servers: str | None

    @classmethod
    def choose(cls, args: argparse.Namespace) -> tuple[Pinning, str]:
        if args.no_pin:
            return cls(None, None, None), "nothing pinned"
        if shutil.which("taskset") is None:
            return cls(None, None, None), "nothing pinned (no taskset)"
        allowed = os.sched_getaffinity(0)
        wanted = [args.upstream_cpus, args.wrk_cpus, args.server_cpus]
        usable = all(_cpus_in(spec, allowed) for spec in wanted if spec is not None)
        if not usable:
            return cls(
                None, None, None
            ), f"nothing pinned (CPUs {sorted(allowed)} do not cover the pinning asked)"
        servers = f"servers on {args.server_cpus}" if args.server_cpus else "servers under test unpinned"
        note = f"upstream on core {args.upstream_cpus}, wrk (1 thread) on core {args.wrk_cpus}, {servers}"
        return cls(args.upstream_cpus, args.wrk_cpus, args.server_cpus), note


def _cpus_in(spec: str, allowed: set[int]) -> bool:
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus <= allowed


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_targets(args: argparse.Namespace, pins: Pinning, logs: Path, started: list[Target]) -> list[Target]:
    """Start the upstream (and wait for it), then every other server at once, then wait for each.

    Each target lands in `started` as soon as its process exists, so the caller can always stop it.
    """
    python = sys.executable
    upstream = start_upstream(
        python, logs, pins.upstream, args.upstream_delay_ms, args.stream_chunks, args.stream_gap_ms
    )
    started.append(upstream)
    upstream.wait_ready(args.stream)
    if upstream.failed:
        raise RuntimeError(f"fake upstream: {upstream.error}\n{upstream.process.log_tail()}")
    if "thin-proxy" in args.targets:
        started.append(start_thin_proxy(python, logs, pins.servers, upstream))
    if "router" in args.targets:
        overrides = dict(args.router_env)
        for variant in args.variants:
            for source in [None] if args.baseline is None else [args.baseline.resolve(), None]:
                for (router_bin, label), workers in itertools.product(
                    router_bins(args.router_bin), args.router_workers
                ):
                    started.append(
                        start_router(
                            router_bin,
                            variant,
                            logs,
                            pins.servers,
                            upstream,
                            overrides,
                            workers,
                            source,
                            label + (f"@w{workers}" if len(args.router_workers) > 1 else ""),
                        )
                    )
    if "litellm" in args.targets and args.litellm_venv is not None:
        if (args.litellm_venv / "bin" / "litellm").exists():
            started.append(start_litellm(args.litellm_venv, logs, pins.servers, upstream))
        else:
            _log(f"litellm: skipped, no {args.litellm_venv / 'bin' / 'litellm'}")
    elif "litellm" in args.targets:
        _log("litellm: skipped (no --litellm-venv)")
    measured = [t for t in started if t is not upstream or "direct" in args.targets]
    for target in measured:
        if target is not upstream and not target.failed:
            target.wait_ready(args.stream)
        status = f"FAILED: {target.error}" if target.failed else f"ready at {target.url}"
        _log(f"{target.name:<16} {status}")
    return measured


def router_bins(given: list[Path]) -> list[tuple[Path, str]]:
    """(router executable, label): one unlabelled; several, each labelled with its interpreter (`@py3.12`)."""
    if not given:
        default = REPO / ".venv" / "bin" / "router"
        return [(default if default.exists() else Path(sys.executable).parent / "router", "")]
    if len(given) == 1:
        return [(given[0], "")]
    return [(path, "@py" + interpreter_version(path)) for path in given]


def interpreter_version(router_bin: Path) -> str:
    """X.Y of the Python next to a console script (its venv's `python`)."""
    python = router_bin.parent / "python"
    done = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python}: {done.stderr.strip() or 'does not run'}")
    return done.stdout.strip()


def measure(target: Target, upstream: Target, conc: int, args: argparse.Namespace, runner: WrkRunner) -> Row:
    row = Row(target.name, conc)
    if target.failed:
        row.error = target.error
        return row
    env = {
        "BENCH_KEY": "sk-bench-master",
        "BENCH_MODEL": target.model,
        "BENCH_IDEMPOTENCY": "1" if args.idempotency else "0",
    }
    try:
        if args.warmup > 0:
            runner.run(target.url, conc, args.warmup, {**env, "BENCH_NONCE": f"w{time.time_ns():x}"})
        pid, upstream_pid = target.process.pid, upstream.process.pid
        cpu_before, upstream_before = cpu_seconds(pid), cpu_seconds(upstream_pid)
        with profiled(args.profile, target, conc, args.duration):
            result = runner.run(
                target.url, conc, args.duration, {**env, "BENCH_NONCE": f"m{time.time_ns():x}"}
            )
        cpu_after, upstream_after = cpu_seconds(pid), cpu_seconds(upstream_pid)
        row.rss_mib = rss_mib(pid)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        row.error = f"wrk: {exc}"
        if target.process.exited():
            target.fail(f"exited during the run (status {target.process.exit_status()}); {row.error}")
            row.error = target.error
        return row
    row.rps, row.p50_ms, row.p90_ms, row.p99_ms = result.rps, result.p50_ms, result.p90_ms, result.p99_ms
    row.requests, row.errors, row.codes = result.requests, result.errors, result.codes
    if result.requests:
        row.cpu_us_per_req = (cpu_after - cpu_before) * 1e6 / result.requests
        if target is not upstream:
            row.upstream_cpu_us_per_req = (upstream_after - upstream_before) * 1e6 / result.requests
        if args.stream:
            row.cpu_us_per_chunk = row.cpu_us_per_req / args.stream_chunks
    if target.process.exited():
        target.fail(f"exited during the run (status {target.process.exit_status()})")
        row.error = target.error
    elif result.requests == 0:
        row.error = "no completed requests"
    return row


@contextmanager
def profiled(directory: Path | None, target: Target, conc: int, duration: float) -> Iterator[None]:
    """py-spy samples the router (its workers too) while wrk runs: where its CPU goes, per row."""
    if directory is None or not target.name.startswith("router") or target.process.pid is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{target.name.replace(':', '-')}-c{conc}.txt"
    command = [spy, "record", "--pid", str(target.process.pid), "--subprocesses", "--rate", "100"]
    command += ["--duration", str(max(1, int(duration))), "--format", "raw", "--output", str(out)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as spying:
        try:
            yield
        finally:
            with suppress(subprocess.TimeoutExpired):
                spying.wait(timeout=duration + 10)


def git_commit() -> str:
    def git(*command: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *command], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def command_line() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    return shlex.join([python, os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        _log("wrk is not installed (apt-get install wrk)")
        return 2
    pins, pin_note = Pinning.choose(args)
    runner = WrkRunner(HERE / ("chat_stream.lua" if args.stream else "chat.lua"), pins.wrk)
    logs = Path(tempfile.mkdtemp(prefix="router-bench-"))
    started: list[Target] = []
    try:
        measured = start_targets(args, pins, logs, started)
        upstream = started[0]
        live = sum(not target.failed for target in measured)
        total = (args.warmup + args.duration) * live * len(args.conc) * args.rounds
        _log(f"measuring {live} targets x c={args.conc} x {args.rounds} round(s): ~{total:.0f} s")
        samples: list[Row] = []
        for _ in range(args.rounds):
            for conc in args.conc:
                for target in measured:
                    row = measure(target, upstream, conc, args, runner)
                    samples.append(row)
                    shown = f"{row.rps:,.0f} RPS p50 {row.p50_ms:.2f} ms" if row.rps is not None else "FAILED"
                    _log(f"  c={conc:<4} {target.name:<16} {shown}")
        order = {target.name: n for n, target in enumerate(measured)}
        rows = sorted(pick_medians(samples), key=lambda row: (row.conc, order[row.target]))
        add_comparisons(rows)
        print(text_table(rows))
        print(f"({pin_note}; {os.cpu_count()} CPUs; warm-up {args.warmup:g} s, measured {args.duration:g} s)")
        for name, reason in failures(rows).items():
            failed = next((t for t in measured if t.name == name.split(" ")[0]), None)
            print(f"\n{name} FAILED: {reason}")
            if failed is not None:
                print(f"--- log tail ({failed.process.log_path.name}) ---\n{failed.process.log_tail()}")
        write_outputs(args, rows, measured, pin_note)
        return 1 if failures(rows) else 0
    except RuntimeError as exc:
        _log(f"benchmark aborted: {exc}")
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for target in reversed(started):
            with suppress(Exception):
                target.process.stop()
        if args.keep_logs:
            _log(f"logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)


def stream_note(args: argparse.Namespace) -> str:
    gap = f"{args.stream_gap_ms:g} ms apart" if args.stream_gap_ms > 0 else "written at once"
    return f"streaming, {args.stream_chunks} chunk events per answer ({gap}; + usage when asked, + [DONE])"


def write_outputs(args: argparse.Namespace, rows: list[Row], measured: list[Target], pin_note: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    commit = git_commit()
    workers = ",".join(map(str, args.router_workers))
    notes = (
        f"{os.cpu_count()} CPUs, {pin_note}; router workers {workers}, others 1; wrk 1 thread; "
        f"warm-up {args.warmup:g} s, measured {args.duration:g} s per row, median of {args.rounds} round(s); "
        f"{stream_note(args) if args.stream else 'non-streaming'}"
        f"{', an Idempotency-Key per request' if args.idempotency else ''}. "
        "CPU µs/req = Δ(utime+stime) of the server's process tree over the measured window / requests; "
        "x thin = RPS / thin-proxy RPS and +p50 = p50 - direct p50, at the same c."
        + (" CPU µs/chunk = CPU µs/req / chunk events." if args.stream else "")
    )
    if args.json is not None:
        meta: dict[str, object] = {
            "date": now.isoformat(timespec="seconds"),
            "commit": commit,
            "command": command_line(),
            "cpus": os.cpu_count(),
            "pinning": pin_note,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "stream": args.stream,
            "stream_chunks": args.stream_chunks if args.stream else None,
            "stream_gap_ms": args.stream_gap_ms if args.stream else None,
            "router_workers": args.router_workers,
            "idempotency": args.idempotency,
            "notes": notes,
        }
        write_json(args.json, meta, rows, [target.describe() for target in measured])
    if args.markdown is not None:
        heading = f"{now:%Y-%m-%d %H:%M} UTC {commit}"
        append_markdown(args.markdown, heading, command_line(), notes, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # respect nohup
        signal.signal(signal.SIGHUP, _terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        _log("interrupted; every server started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
