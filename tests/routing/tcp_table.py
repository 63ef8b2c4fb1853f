"""Loopback TCP connections as the kernel sees them (/proc/net/tcp), to watch pools from outside."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ESTABLISHED = "01"
CLOSE_WAIT = "08"
LISTEN = "0A"


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str


def sockets() -> list[TcpSocket]:
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    found = []
    for row in rows:
        fields = row.split()
        local, remote, state = fields[1], fields[2], fields[3]
        found.append(TcpSocket(int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state))
    return found


def client_ports(server_port: int) -> set[int]:
    """Local ports of established client connections to ``server_port``."""
    return {s.local_port for s in sockets() if s.remote_port == server_port and s.state == ESTABLISHED}


def server_side_open(server_port: int) -> int:
    """Connections the server on ``server_port`` still holds open (established, or peer-closed)."""
    return sum(1 for s in sockets() if s.local_port == server_port and s.state in (ESTABLISHED, CLOSE_WAIT))
