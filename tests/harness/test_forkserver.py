"""The fork server stands for `exec router`: same exit statuses, output, session, directory and
environment; and the harness execs whenever the interpreter would start differently."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.harness.forkserver import ForkedChild, ForkServer, startup_environment
from tests.harness.process import PopenChild
from tests.harness.router_proc import RouterProcess, router_command


def forked(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[ForkedChild, Path]:
    log = tmp_path / "out.log"
    child = ForkServer.shared().spawn(
        [*router_command(), *args], env or dict(os.environ), str(tmp_path), str(log)
    )
    return child, log


def test_exit_statuses_and_output_are_the_console_scripts(tmp_path: Path) -> None:
    helped, log = forked(tmp_path, "--help")
    assert helped.wait() == 0
    assert "usage: router" in log.read_text()

    wrong, log = forked(tmp_path, "no-such-command")
    assert wrong.wait() == 2  # argparse's SystemExit(2)
    assert "invalid choice: 'no-such-command'" in log.read_text()


def test_a_router_is_a_session_leader_with_its_own_directory_and_environment(tmp_path: Path) -> None:
    with RouterProcess(workdir=tmp_path) as router:
        child = router._popen
        assert isinstance(child, ForkedChild)
        pid = child.pid
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        assert Path(f"/proc/{pid}/cwd").resolve() == tmp_path.resolve()
        # ROUTER_DATA_DIR came from the environment the harness asked for, not the server's
        assert any(router.data_dir.iterdir())
        assert not child.exited()
        router.kill()
        assert router.last_exit_code == -signal.SIGKILL


def test_an_interpreter_that_would_start_differently_is_execed(tmp_path: Path) -> None:
    class Preloaded(RouterProcess):
        def environment(self) -> dict[str, str]:
            return {**super().environment(), "LD_PRELOAD": "libc.so.6"}

    assert startup_environment({"LD_PRELOAD": "x", "ROUTER_A": "1", "PYTHONUNBUFFERED": "1"}) == {
        "LD_PRELOAD": "x"
    }
    with Preloaded(workdir=tmp_path) as router:
        assert isinstance(router._popen, PopenChild)


def test_the_old_way_is_one_variable_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_TEST_FORK", "0")
    with RouterProcess(workdir=tmp_path) as router:
        assert isinstance(router._popen, PopenChild)
