"""One external server run as a child in its own session: start, wait healthy, stop, kill, restart."""

from __future__ import annotations

import abc
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self

SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
POLL_INTERVAL_S = 0.02
KILL_WAIT_S = 5.0
# A start may take up to this many times `start_timeout_s` of wall time while the server is still short
# of `start_timeout_s` of CPU (a starved machine), but never past the per-test timeout (pyproject: 120 s).
START_WALL_FACTOR = 5.0
START_WALL_CAP_S = 100.0


class BinaryNotFoundError(RuntimeError):
    """A server binary the harness needs is not installed."""


class ServiceStartError(RuntimeError):
    """A server exited or did not become healthy before its deadline."""


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BinaryNotFoundError(
        f"{name!r} not found on PATH or in {', '.join(SEARCH_DIRS)}; run tools/install-services.sh"
    )


class Child(Protocol):
    """The leader of a server's process group: a Popen, or a child of the fork server."""

    pid: int
    returncode: int | None

    def exited(self) -> bool:
        """Whether it has exited, without reaping it (its PID stays reserved)."""
        ...

    def wait(self) -> int: ...


class PopenChild:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def exited(self) -> bool:
        if self._popen.returncode is not None:
            return True
        try:
            status = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return status is not None

    def wait(self) -> int:
        return self._popen.wait()


def cpu_seconds(child: Child | None) -> float:
    """User + system CPU time of a running child (/proc); 0 when it is gone or not on Linux."""
    if child is None:
        return 0.0
    try:
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "<no log file>"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess(abc.ABC):
    """A server process on fixed ports and a fixed work dir, so `start()` after `stop()` is a restart.

    The process is a session leader (its PID is its process group id); stop and kill
    signal the whole group. The leader is only reaped after the group was signalled,
    so the group id can never have been reused by then.
    """

    name = "process"
    # CPU seconds the server may spend becoming healthy: on a loaded machine a start takes longer in wall
    # time, not in work; a wall cap (START_WALL_FACTOR, START_WALL_CAP_S) still ends one that hangs.
    start_timeout_s = 15.0
    stop_timeout_s = 10.0
    max_spawn_attempts = 3

    def __init__(self, workdir: Path | None = None) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.last_start_seconds: float | None = None
        self.last_exit_code: int | None = None
        self._popen: Child | None = None
        self._ever_healthy = False

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    @abc.abstractmethod
    def is_healthy(self) -> bool: ...

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def choose_new_ports(self) -> None:
        """Called when a first start failed early (e.g. a port race); ports must stay put afterwards."""

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and not self._leader_exited()

    def start(self) -> Self:
        """Start (or restart) the server and block until healthy; no-op when already running."""
        if self.running:
            return self
        self._reap()
        began = time.monotonic()
        deadline = began + self.start_timeout_s
        wall_cap = began + max(
            self.start_timeout_s, min(self.start_timeout_s * START_WALL_FACTOR, START_WALL_CAP_S)
        )
        attempt = 1
        self._spawn(attempt)
        while not self._healthy_and_alive():
            if self._leader_exited():
                self._reap()
                if attempt >= self.max_spawn_attempts or time.monotonic() >= deadline:
                    raise self._start_error(f"exited with code {self.last_exit_code}")
                if not self._ever_healthy:
                    self.choose_new_ports()
                time.sleep(0.1 * attempt)
                attempt += 1
                self._spawn(attempt)
            elif time.monotonic() >= wall_cap or (
                time.monotonic() >= deadline and cpu_seconds(self._popen) >= self.start_timeout_s
            ):
                spent = cpu_seconds(self._popen)
                self.kill()
                raise self._start_error(
                    f"not healthy after {time.monotonic() - began:.0f} s ({spent:.1f} s of its CPU)"
                )
            else:
                time.sleep(POLL_INTERVAL_S)
        self._ever_healthy = True
        self.last_start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after `stop_timeout_s`."""
        if self._popen is None:
            return
        if not self._leader_exited():
            self._signal_group(signal.SIGTERM)
            if not self._wait_leader_exit(self.stop_timeout_s):
                self._signal_group(signal.SIGKILL)
                self._wait_leader_exit(KILL_WAIT_S)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process group at once (crash simulation)."""
        if self._popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self._wait_leader_exit(KILL_WAIT_S)
        self._reap()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work dir when the harness created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} workdir={self.workdir}>"

    def _spawn(self, attempt: int) -> None:
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {self.name} start attempt {attempt}: {shlex.join(command)}\n".encode())
            log.flush()
            self._popen = self.launch(command, log)

    def launch(self, command: list[str], log: IO[bytes]) -> Child:
        """Start the leader of a new session, its output going to ``log``."""
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.environment(),
            start_new_session=True,
        )
        return PopenChild(popen)

    def _healthy_and_alive(self) -> bool:
        # Checked both sides of the probe so a stranger answering on our port never counts.
        return not self._leader_exited() and self.is_healthy() and not self._leader_exited()

    def _leader_exited(self) -> bool:
        """Whether the leader has exited, without reaping it (WNOWAIT keeps its PID reserved)."""
        return self._popen is None or self._popen.exited()

    def _wait_leader_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._leader_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._popen is None or self._popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)

    def _reap(self) -> None:
        """Kill stragglers left in the group by an exited leader, then collect the leader."""
        if self._popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self.last_exit_code = self._popen.wait()
        self._popen = None

    def _start_error(self, reason: str) -> ServiceStartError:
        return ServiceStartError(
            f"{self.name} {reason}; command: {shlex.join(self.command())}\n"
            f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )
