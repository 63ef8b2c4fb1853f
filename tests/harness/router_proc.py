"""The router itself (`router serve`) as a subprocess on a free port, plus a fleet that cleans up."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.harness import forkserver
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.probes import http_answers
from tests.harness.process import Child, ManagedProcess

HEALTHZ_PATH = "/v1/status/healthz"


def router_command() -> list[str]:
    """The venv's `router` console script, else the CLI module run by this interpreter."""
    script = Path(sys.executable).parent / "router"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "router_impl.cli"]


class RouterProcess(ManagedProcess):
    """`router serve` with the given ROUTER_* env; the caller's own ROUTER_* variables never leak in."""

    name = "router"
    start_timeout_s = 20.0
    stop_timeout_s = 15.0  # SIGTERM drains the outbox before exit
    max_spawn_attempts = 2

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        workdir: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.extra_env = dict(env or {})
        self.args = tuple(args)
        self._port_pinned = port is not None
        self.port = port if port is not None else free_port()
        self.data_dir = self.workdir / "data"
        if "--workers" in self.args:  # each worker is a fresh interpreter importing the whole app
            self.start_timeout_s = 60.0

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [*router_command(), "serve", "--host", LOOPBACK, "--port", str(self.port), *self.args]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTER_")}
        env["ROUTER_DATA_DIR"] = str(self.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def launch(self, command: list[str], log: IO[bytes]) -> Child:
        """Forked from the warm fork server (tests/harness/forkserver.py) when the process would be
        the plain console script with an interpreter the server can stand for; exec'd otherwise."""
        env = self.environment()
        plain = type(self).command is RouterProcess.command and "--workers" not in self.args
        if plain and forkserver.enabled():
            server = forkserver.ForkServer.shared()
            if server.can_fork(env):
                return server.spawn(command, env, str(self.workdir), str(self.log_path))
        return super().launch(command, log)

    def is_healthy(self) -> bool:
        return http_answers(self.base_url + HEALTHZ_PATH)

    def choose_new_ports(self) -> None:
        if not self._port_pinned:
            self.port = free_port()


class RouterFleet:
    """Starts routers in numbered dirs under `root` and stops every one of them on `close()`."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._routers: list[RouterProcess] = []

    def start(
        self, env: Mapping[str, str] | None = None, port: int | None = None, args: Sequence[str] = ()
    ) -> RouterProcess:
        workdir = self._root / f"router-{len(self._routers)}"
        router = RouterProcess(env=env, port=port, args=args, workdir=workdir)
        self._routers.append(router)
        return router.start()

    def close(self) -> None:
        for router in reversed(self._routers):
            router.close()
        self._routers.clear()
