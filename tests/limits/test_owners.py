"""Owner ids of router processes, and the data dir's registry of them (crash recovery, issue 15.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from router_impl.limits.owners import OwnerRegistry, owner_alive, owner_id


def test_this_process_is_alive_and_a_finished_one_is_dead() -> None:
    assert owner_alive(owner_id())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_owner = owner_id(child.pid)
    assert owner_alive(child_owner)
    child.wait()
    assert not owner_alive(child_owner)


def test_a_reused_pid_or_another_boot_is_not_the_same_owner() -> None:
    boot, pid, started = owner_id().split(".")
    assert not owner_alive(f"{boot}.{pid}.{int(started) + 1}")  # same pid, started at another time
    assert not owner_alive(f"{'0' * 32}.{pid}.{started}")  # another host or boot
    assert owner_alive("not-an-owner-id")  # unknown: never declared dead


def test_registry_names_the_processes_that_died_without_unregistering(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = OwnerRegistry(tmp_path, owner_id(child.pid))
        assert killed.register() == []
        stopped = OwnerRegistry(tmp_path, owner_id(child.pid).replace(".", ".9", 1))
        stopped.register()
        stopped.unregister()  # a clean stop leaves nothing behind
        child.kill()
        child.wait()
        me = OwnerRegistry(tmp_path)
        assert me.register() == [killed.me]
        assert sorted(os.listdir(tmp_path)) == [me.me]
        assert me.register() == []
    finally:
        child.kill()
        child.wait()
