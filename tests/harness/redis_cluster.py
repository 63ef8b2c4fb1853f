"""A real Redis Cluster on loopback: three masters (``redis-server --cluster-enabled yes``) joined by
``redis-cli --cluster create``, each owning a third of the 16,384 hash slots."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.harness.ports import LOOPBACK
from tests.harness.process import ServiceStartError, find_binary
from tests.harness.services import RedisServer

MASTERS = 3
READY_TIMEOUT_S = 30.0


class RedisClusterNode(RedisServer):
    name = "redis-cluster-node"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.workdir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


class RedisClusterServer:
    """``start()`` the nodes and create the cluster; ``close()`` stops every node."""

    def __init__(self, workdir: Path) -> None:
        self.cli = find_binary("redis-cli")
        self.nodes = [RedisClusterNode(workdir / f"node-{i}") for i in range(MASTERS)]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, node.port) for node in self.nodes]

    def start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise ServiceStartError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self._state_ok(node.port) for node in self.nodes):
            if time.monotonic() >= deadline:
                raise ServiceStartError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def _state_ok(self, port: int) -> bool:
        info = subprocess.run(
            [self.cli, "-h", LOOPBACK, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return "cluster_state:ok" in info.stdout

    def close(self) -> None:
        for node in self.nodes:
            node.close()
