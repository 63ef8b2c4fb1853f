"""One wrk run (one thread, pinned) against one target, parsed from the WRKJSON line chat.lua prints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Slack on top of the run's duration and wrk's request timeout before the harness kills wrk.
KILL_SLACK_S = 20.0
REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(count for code, count in self.codes.items() if code.startswith("2"))

    @property
    def errors(self) -> int:
        """Responses that were not 2xx plus connect/read/write errors and timeouts."""
        return self.requests - self.ok + self.socket_errors

    @classmethod
    def parse(cls, stdout: str) -> WrkResult:
        line = next((line for line in stdout.splitlines() if line.startswith("WRKJSON ")), None)
        if line is None:
            raise ValueError(f"no WRKJSON line in wrk output:\n{stdout[-2000:]}")
        data = json.loads(line.removeprefix("WRKJSON "))
        return cls(
            requests=int(data["requests"]),
            duration_s=data["duration_us"] / 1e6,
            rps=float(data["rps"]),
            p50_ms=float(data["p50_ms"]),
            p90_ms=float(data["p90_ms"]),
            p99_ms=float(data["p99_ms"]),
            max_ms=float(data["max_ms"]),
            socket_errors=sum(int(data[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout")),
            codes={str(k): int(v) for k, v in data["codes"].items()},
        )


@dataclass(frozen=True)
class WrkRunner:
    script: Path
    cpus: str | None  # taskset list for wrk, e.g. "0"; None = unpinned
    threads: int = 1

    def run(self, url: str, connections: int, seconds: float, env: Mapping[str, str]) -> WrkResult:
        command = [
            "wrk",
            f"-t{min(self.threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={REQUEST_TIMEOUT_S}s",
            "-s",
            str(self.script),
            url,
        ]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
            text=True,
        )
        try:
            stdout, _ = process.communicate(timeout=seconds + REQUEST_TIMEOUT_S + KILL_SLACK_S)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"wrk exited {process.returncode}:\n{stdout[-2000:]}")
        return WrkResult.parse(stdout)
