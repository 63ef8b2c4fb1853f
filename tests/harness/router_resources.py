"""A router process's resource figures, read from /proc and its /metrics: RSS (and its heap share),
open fds, TCP connections to given backend ports, and event-loop tasks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.router_proc import RouterProcess
from tests.telemetry.test_metrics import value as metric


@dataclass(frozen=True)
class Resources:
    rss_kb: int  # VmRSS
    anon_kb: int  # RssAnon: the heap's share of it (VmRSS also counts the LMDB maps' file pages)
    fds: int
    backend_sockets: int  # of those fds, TCP connections to a backend (busy or pooled)
    tasks: int  # router_event_loop_tasks at the scrape

    @property
    def own_fds(self) -> int:
        """Every fd but the backend connections: listening and client sockets, files, LMDB."""
        return self.fds - self.backend_sockets


def resources(router: RouterProcess, backend_ports: frozenset[int]) -> Resources:
    pid = router.pid
    assert pid is not None, "the router is not running"
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    links = []
    for fd in os.listdir(proc / "fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            links.append(os.readlink(proc / "fd" / fd))
    sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    scrape = httpx.get(router.base_url + "/metrics", trust_env=False, timeout=5.0)
    scrape.raise_for_status()
    return Resources(
        rss_kb=_kb(status["VmRSS"]),
        anon_kb=_kb(status["RssAnon"]),
        fds=len(links),
        backend_sockets=sum(
            1 for port, inode in _tcp_peers(proc) if inode in sockets and port in backend_ports
        ),
        tasks=int(metric(scrape.text, "router_event_loop_tasks")),
    )


def _tcp_peers(proc: Path) -> Iterator[tuple[int, str]]:
    """(remote port, socket inode) of each IPv4 TCP socket in the process's network namespace."""
    for line in (proc / "net" / "tcp").read_text().splitlines()[1:]:
        fields = line.split()
        yield int(fields[2].rsplit(":", 1)[1], 16), fields[9]


def _kb(field: str) -> int:
    return int(field.split()[0])
