"""Shared fixtures: real Redis, etcd and Kafka-protocol servers, mock model backends, router processes.

Session servers are shared: a test that stops or kills one must `start()` it again before it ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings

from tests.harness.backend import MockBackend
from tests.harness.process import BinaryNotFoundError, ManagedProcess
from tests.harness.redis_cluster import RedisClusterServer
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer, router_service_env

# Property tests check behaviour, not speed: a loaded CI machine must not fail them on time.
settings.register_profile("router", deadline=None)
settings.load_profile("router")

ServiceT = TypeVar("ServiceT", bound=ManagedProcess)
SERVICE_FIXTURES = frozenset(
    {"redis_server", "redis_cluster", "own_redis", "etcd_server", "kafka_broker", "services_env"}
)


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _started(create: Callable[[], ServiceT]) -> ServiceT:
    """Create and start a server; a missing binary skips locally but fails on CI."""
    try:
        service = create()
    except BinaryNotFoundError as exc:
        if _on_ci():
            pytest.fail(f"{exc} (CI=true: real-service tests must not be skipped)", pytrace=False)
        pytest.skip(str(exc))
    try:
        return service.start()
    except BaseException:
        service.close()
        raise


# The files that take longest (minutes of two cores each), run first so that xdist does not leave
# them for last: `make test` passes --no-loadscope-reorder, which keeps this order; xdist's own
# order (most tests first) put the one-test fuzzing files at the very end of the run.
LONGEST_FIRST = (
    "tests/contract/test_fuzz_fixed_seed.py",
    "tests/contract/test_fuzz_random_seed.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that need real servers so `-m "not services"` can deselect them; order the files
    LONGEST_FIRST, then by their number of tests, most first (xdist's default order)."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def rank(path: str) -> tuple[int, int]:
        first = LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
        return first, -len(files[path])

    items[:] = [item for path in sorted(files, key=rank) for item in files[path]]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _started(lambda: RedisServer(workdir=tmp_path_factory.mktemp("redis")))
    yield server
    server.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop, freeze or restart."""
    server = _started(lambda: RedisServer(workdir=tmp_path / "own-redis"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """Three masters and a replica; a failover swaps roles, so tests find nodes by slot, not by port."""
    server = _started(lambda: RedisClusterServer(tmp_path_factory.mktemp("redis-cluster"), replicas=1))
    yield server
    server.close()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = _started(lambda: EtcdServer(workdir=tmp_path_factory.mktemp("etcd")))
    yield server
    server.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = _started(lambda: KafkaBroker(workdir=tmp_path_factory.mktemp("tansu")))
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def services_env(
    redis_server: RedisServer, etcd_server: EtcdServer, kafka_broker: KafkaBroker
) -> dict[str, str]:
    """ROUTER_REDIS_URL, ROUTER_ETCD_ENDPOINTS and ROUTER_KAFKA_BOOTSTRAP for the session servers."""
    return router_service_env(redis_server, etcd_server, kafka_broker)


@pytest.fixture
def mock_backend() -> Iterator[MockBackend]:
    with MockBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def primary_and_standby(request: pytest.FixtureRequest) -> Iterator[tuple[MockBackend, MockBackend]]:
    """Two mock backends serving the test module's ``MODEL``, for the whole module (through ``pair``)."""
    model = request.module.MODEL
    with MockBackend(models=(model,)) as primary, MockBackend(models=(model,)) as standby:
        yield primary, standby


@pytest.fixture
def pair(primary_and_standby: tuple[MockBackend, MockBackend]) -> Iterator[tuple[MockBackend, MockBackend]]:
    """The module's primary and standby backends, running (same ports: a test may stop one), with
    default controls and zeroed counters."""
    for backend in primary_and_standby:
        backend.start()
        backend.reset_controls()
        backend.reset_counters()
    yield primary_and_standby
    for backend in primary_and_standby:
        backend.start()
        backend.reset_controls()


@pytest.fixture
def router_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RouterProcess]]:
    """`router_factory(env={...}, port=None, args=("--demo",))` starts a router; all stop at teardown."""
    fleet = RouterFleet(tmp_path_factory.mktemp("routers"))
    yield fleet.start
    fleet.close()
