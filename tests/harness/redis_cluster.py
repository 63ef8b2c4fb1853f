"""A real Redis Cluster on loopback: three masters (``redis-server --cluster-enabled yes``) joined by
``redis-cli --cluster create``, each owning a third of the 16,384 hash slots, and ``replicas``
replica nodes (of the first masters) that ``failover()`` promotes with ``CLUSTER FAILOVER``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.harness.ports import LOOPBACK
from tests.harness.process import ServiceStartError, find_binary
from tests.harness.services import RedisServer
from tests.harness.wait import wait_until


def _wait(done: Callable[[], bool], what: str) -> None:
    wait_until(done, timeout=READY_TIMEOUT_S, interval=0.05, what=f"the Redis Cluster: {what}")


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

    def __init__(self, workdir: Path, replicas: int = 0) -> None:
        self.cli = find_binary("redis-cli")
        self.nodes = [RedisClusterNode(workdir / f"node-{i}") for i in range(MASTERS + replicas)]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, node.port) for node in self.nodes[:MASTERS]]

    @property
    def router_env(self) -> dict[str, str]:
        """The router's settings for this cluster: two seed URLs (it discovers the rest)."""
        seeds = ",".join(f"redis://{host}:{port}" for host, port in self.startup_nodes[:2])
        return {"ROUTER_REDIS_URL": seeds, "ROUTER_REDIS_CLUSTER": "true"}

    def cli_run(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [self.cli, "-h", LOOPBACK, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout + done.stderr

    def roles(self) -> dict[int, str]:
        """Each node's port and role (``master`` or ``slave``), as the node itself says."""
        return {node.port: self.cli_run(node.port, "role").split("\n", 1)[0].strip() for node in self.nodes}

    def replicated_master(self) -> int:
        """The port of the master that has a replica: the one whose slots ``failover()`` moves."""
        replica = next(p for p, role in self.roles().items() if role == "slave")
        return int(self.cli_run(replica, "role").split("\n")[2])

    def failover(self) -> int:
        """``CLUSTER FAILOVER`` on a replica (the coordinated, lossless one): returns its port once it
        is master and every node agrees the cluster is ok."""
        port = next(p for p, role in self.roles().items() if role == "slave")
        answer = self.cli_run(port, "cluster", "failover")
        if "OK" not in answer:
            raise ServiceStartError(f"CLUSTER FAILOVER refused: {answer}")
        _wait(lambda: self.roles()[port] == "master" and self._all_ok(), "the failover to complete")
        return port

    def start(self) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes[:MASTERS]]
        created = subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise ServiceStartError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        _wait(lambda: all(self._state_ok(node.port) for node in self.nodes[:MASTERS]), "cluster_state:ok")
        for n, replica in enumerate(self.nodes[MASTERS:]):
            master = self.nodes[n % MASTERS].port
            master_id = self.cli_run(master, "cluster", "myid").strip()
            self.cli_run(replica.port, "cluster", "meet", LOOPBACK, str(master))
            _wait(lambda r=replica, m=master_id: "OK" in self.cli_run(r.port, "cluster", "replicate", m),
                       "the replica to know its master")  # fmt: skip
        _wait(self._replicas_synced, "every replica in sync")
        _wait(self._all_ok, "cluster_state:ok")
        return self

    def _replicas_synced(self) -> bool:
        replicas = self.nodes[MASTERS:]
        return all("master_link_status:up" in self.cli_run(r.port, "info", "replication") for r in replicas)

    def _all_ok(self) -> bool:
        return all(self._state_ok(node.port) for node in self.nodes)

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
