"""`router serve` forked from a warm interpreter instead of a fresh one, for the test suite only.

A router process spends ~1.1 of its ~1.7 CPU-seconds of start-up importing its libraries (connexion,
aiohttp, redis, confluent-kafka, grpc, pydantic, OpenTelemetry); the suite starts ~140 of them,
~160 CPU-seconds of a CPU-bound run on two cores. The server here imports those libraries once, in
a process of its own (one per pytest process), and forks a child for each router: the child is a
session leader with its own log, working directory, environment and argv, and runs the same
`router_impl.cli.main` the console script runs, so what it does from `main()` on is what a user's
process does. What it skips is only the import of modules that read nothing at import time (the
server checks it has no thread before it forks; an environment that changes how an interpreter starts
— LD_PRELOAD, libfaketime's variables, PYTHON* — is refused, and the harness execs instead).

The console script itself keeps its tests: tests/e2e/test_demo_newcomer.py, the CLI tests and
the smoke runs exec it; `ROUTER_TEST_FORK=0` makes every router exec (`make test` then measures the
old way).

Protocol (JSON lines; requests on the server's stdin, answers on its stdout):
``{"spawn": {"argv", "env", "cwd", "log"}}`` -> ``{"pid"}``;
``{"exited": pid}`` -> ``{"exited": bool}`` (not reaped: the pid stays reserved, like waitid's WNOWAIT);
``{"reap": pid}`` -> ``{"code"}``, the exit status the way Popen reports it (-N: killed by signal N).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENABLE_ENV = "ROUTER_TEST_FORK"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Variables that decide how an interpreter or its libraries start: a child asking for other values
# than the server started with cannot be forked from it.
_STARTUP_PREFIXES = ("LD_", "FAKETIME", "DONT_FAKE", "PYTHON", "MALLOC")
_FORK_SAFE_EXTRA = frozenset({"PYTHONUNBUFFERED"})  # the child's streams are made unbuffered anyway
PRELOADED = (
    "router_impl.cli",
    "router_impl.app",
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.main",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
)


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def startup_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {
        key: value
        for key, value in env.items()
        if key.startswith(_STARTUP_PREFIXES) and key not in _FORK_SAFE_EXTRA
    }


# ---------------------------------------------------------------- the server (its own process)


def _exit_status(code: object) -> int:
    """What `sys.exit(code)` makes the process's exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _become(argv: Sequence[str], env: Mapping[str, str], cwd: str, log: str) -> None:
    """In the forked child: take the router's stdio, session, directory and environment, run it, exit."""
    status = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(devnull)
        os.close(out)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv)
        from router_impl.cli import main

        try:
            status = _exit_status(main(list(argv[1:])))
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except BaseException:
            traceback.print_exc()
            status = 1
        # What the interpreter does on its way out: join non-daemon threads, run atexit handlers.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(status)


def _status_of(wait_status: int) -> int:
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    if "spawn" in request:
        spec = request["spawn"]
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # forking a threaded process copies locks held by threads that are gone
            return {"error": f"the fork server has {threads} threads"}
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become(spec["argv"], spec["env"], spec["cwd"], spec["log"])
        return {"pid": pid}
    if "exited" in request:
        try:
            found = os.waitid(os.P_PID, int(request["exited"]), os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return {"exited": True}
        return {"exited": found is not None}
    if "reap" in request:
        try:
            _, wait_status = os.waitpid(int(request["reap"]), 0)
        except ChildProcessError:
            return {"code": None}
        return {"code": _status_of(wait_status)}
    return {"error": f"unknown request {sorted(request)}"}


def serve() -> None:
    import importlib

    for module in PRELOADED:
        importlib.import_module(module)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    answers.write(b'{"ready": true}\n')
    answers.flush()
    for line in requests:  # EOF: the pytest process is gone; its routers were its to stop
        try:
            answer = _answer(json.loads(line))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


# ---------------------------------------------------------------- the client (the pytest process)


class ForkServerError(RuntimeError):
    pass


class ForkServer:
    """The pytest process's fork server, started on first use; calls from several threads take turns."""

    _instance: ForkServer | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._env = dict(os.environ)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._env,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for it
        )
        if self._read().get("ready") is not True:
            raise ForkServerError("the fork server did not start")

    @classmethod
    def shared(cls) -> ForkServer:
        with cls._instance_lock:
            if cls._instance is None or cls._instance._process.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def can_fork(self, env: Mapping[str, str]) -> bool:
        return startup_environment(env) == startup_environment(self._env)

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise ForkServerError(f"the fork server exited with {self._process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            answer = self._read()
        if "error" in answer:
            raise ForkServerError(answer["error"])
        return answer

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str, log: str) -> ForkedChild:
        spec = {"argv": list(argv), "env": dict(env), "cwd": cwd, "log": log}
        return ForkedChild(self, int(self.call({"spawn": spec})["pid"]))


class ForkedChild:
    """The parts of Popen the harness uses, for a child of the fork server."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self.pid = pid
        self.returncode: int | None = None

    def exited(self) -> bool:
        """Whether it has exited, without reaping it."""
        if self.returncode is not None:
            return True
        return bool(self._server.call({"exited": self.pid})["exited"])

    def wait(self) -> int:
        if self.returncode is None:
            code = self._server.call({"reap": self.pid})["code"]
            self.returncode = -9 if code is None else int(code)
        return self.returncode


if __name__ == "__main__":
    serve()
