"""Who holds an in-flight idempotency record, and whether that process still lives.

Every router process has an *owner id*: ``<boot id>.<pid>.<process start time>`` — unique across hosts
and boots, and never reused by a later process with the same pid. On one host the id alone says whether
its process is alive (``/proc``), which the LMDB store uses. Across replicas (Redis) a live process keeps
an owner key with a short TTL; a restarted router on the same data dir knows which processes before it
died (``OwnerRegistry``) and clears their keys at once, so their in-flight records are free for retries.
"""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip().replace("-", "") or "noboot"
    except OSError:
        return "noboot"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), if it runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_id(pid: int | None = None) -> str:
    """This process's owner id (or that of ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}.{pid}.{_start_time(pid) or '0'}"


def owner_alive(owner: str) -> bool:
    """Whether the process ``owner`` names still runs. Only a process on this host (same boot) can be
    seen; one from another boot is dead, and an id that is not an owner id counts as alive (unknown)."""
    boot, _, rest = owner.partition(".")
    pid_text, _, started = rest.partition(".")
    if not pid_text.isdigit() or not started:
        return True
    if boot != _boot_id():
        return False
    return _start_time(int(pid_text)) == started


class OwnerRegistry:
    """The router processes that used one data dir: a file per live owner under ``directory``.

    ``register`` adds this process and returns the owners that died without unregistering (SIGKILL,
    OOM, a node crash): their in-flight records can be taken over at once.
    """

    def __init__(self, directory: Path, me: str | None = None) -> None:
        self.directory = directory
        self.me = me or owner_id()

    def register(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        dead = []
        for entry in self.directory.iterdir():
            if entry.name != self.me and not owner_alive(entry.name):
                dead.append(entry.name)
                entry.unlink(missing_ok=True)
        (self.directory / self.me).touch()
        return dead

    def unregister(self) -> None:
        (self.directory / self.me).unlink(missing_ok=True)
