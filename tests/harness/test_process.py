"""ManagedProcess's start deadline: the server's own CPU time, with a wall cap for one that hangs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.harness.process import START_WALL_FACTOR, ManagedProcess, ServiceStartError


class NeverHealthy(ManagedProcess):
    name = "never-healthy"
    start_timeout_s = 0.5

    def __init__(self, workdir: Path, code: str) -> None:
        super().__init__(workdir)
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]

    def is_healthy(self) -> bool:
        return False


def test_a_start_that_has_not_used_its_cpu_allowance_waits_up_to_the_wall_cap(tmp_path: Path) -> None:
    """A starved server (here: one that sleeps) is not failed after start_timeout_s of wall time, as
    a loaded machine made routers that needed 3 CPU-seconds fail their 20 s start; the cap ends it."""
    server = NeverHealthy(tmp_path, "import time; time.sleep(60)")
    began = time.monotonic()
    with pytest.raises(ServiceStartError, match=r"s of its CPU\)"):
        server.start()
    assert time.monotonic() - began >= server.start_timeout_s * START_WALL_FACTOR
    assert not server.running
