"""Chaos fixtures: the package's own Redis, etcd and Kafka (tests stop them), routers running the full
shared pipeline against them (tests/harness/chaos_pipeline.py), and a healthy backend; the load
generator is tests/harness/chaos_load.py.

- ``chaos_stack`` (package): a Redis, an etcd and a Tansu broker of this package alone, with the
  usage and audit topics created. A test that stops, freezes or kills one restores it before it ends.
- ``pipeline_router`` (function): ``pipeline_router(config, env=..., etcd_endpoints=...)``, see
  ``PipelineRouters``; every router stops at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import _started
from tests.harness.backend import MockBackend
from tests.harness.chaos_pipeline import (
    AUDIT_TOPIC,
    MODEL,
    USAGE_TOPIC,
    ChaosStack,
    PipelineRouterFactory,
    PipelineRouters,
)
from tests.harness.kafka import create_topic
from tests.harness.router_proc import RouterFleet
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    with contextlib.ExitStack() as stack:
        redis = _started(lambda: RedisServer(tmp_path_factory.mktemp("chaos-redis")))
        stack.callback(redis.close)
        etcd = _started(lambda: EtcdServer(tmp_path_factory.mktemp("chaos-etcd")))
        stack.callback(etcd.close)
        kafka = _started(lambda: KafkaBroker(tmp_path_factory.mktemp("chaos-tansu")))
        stack.callback(kafka.close)
        for topic in (USAGE_TOPIC, AUDIT_TOPIC):
            create_topic(kafka.bootstrap, topic, partitions=2)
        yield ChaosStack(redis, etcd, kafka)


@pytest.fixture
def backend() -> Iterator[MockBackend]:
    """A healthy backend serving MODEL after 5 ms."""
    with MockBackend(models=(MODEL,)) as mock:
        mock.configure(latency_ms=5)
        yield mock


@pytest.fixture
def pipeline_router(
    chaos_stack: ChaosStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRouterFactory]:
    """``pipeline_router(config, env={...}, etcd_endpoints="host:port")``: see ``PipelineRouters``;
    every router stops at teardown."""
    fleet = RouterFleet(tmp_path_factory.mktemp("chaos-routers"))
    yield PipelineRouters(chaos_stack, fleet).start
    fleet.close()
