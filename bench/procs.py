"""Benchmark servers as session leaders: start, wait ready, stop the whole group; CPU and RSS from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the harness dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its last ')'.
    return text.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (scans /proc once; field 4 is the parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime+stime of `root` and its live descendants, plus cutime+cstime (children already reaped).

    A child's time is counted by itself while alive and in its parent's cutime/cstime once reaped,
    so a worker that exits inside the window is neither lost nor counted twice.
    """
    ticks = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the comm split: index 11..14 = utime, stime, cutime, cstime (fields 14..17).
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def rss_mib(root: int) -> float:
    """Sum of VmRSS over `root` and its live descendants, in MiB."""
    total_kib = 0
    for pid in descendants(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


class ServerProcess:
    """One server run as a session leader (its pid is its process-group id)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== {self.name}: {shlex.join(self.command)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the harness is single-threaded
            )

    def exit_status(self) -> int | None:
        """The leader's exit status (or signal number) once it exited, else None.

        Never reaps (WNOWAIT): until stop() the leader's pid, hence its group id, cannot be reused.
        """
        if self._popen is None:
            return None
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            status = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        return None if status is None else status.si_status

    def exited(self) -> bool:
        return self._popen is not None and self.exit_status() is not None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_WAIT_S; then reap the leader."""
        if self._popen is None or self._popen.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)
            deadline = time.monotonic() + STOP_WAIT_S
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.exited():
                break
        # Stragglers in the group (e.g. uvicorn workers) go too, before the leader's pid is released.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=STOP_WAIT_S)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])


def http_status(host: str, port: int, method: str, path: str, timeout_s: float = 2.0) -> int | None:
    """Status of one request, or None when nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(method, path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_listening(process: ServerProcess, host: str, port: int, path: str, timeout_s: float) -> str | None:
    """Poll until the server answers any HTTP status on `path`; an error string when it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.exited():
            return f"exited during start-up (status {process.exit_status()})"
        if http_status(host, port, "GET", path) is not None:
            return None
        time.sleep(0.1)
    return f"no HTTP answer on {path} after {timeout_s:.0f} s"


def post_json(
    host: str, port: int, path: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 10.0
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one POST; raises OSError/HTTPException when nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
