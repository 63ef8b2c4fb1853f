"""confluent-kafka helpers for tests against the Tansu broker: readiness, topics, client configs."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported, untyped

from tests.harness.ports import LOOPBACK
from tests.harness.probes import accepts_connections

ConfigValue = str | int | float | bool

# A consumer group's first message takes ~23 s with librdkafka's defaults against Tansu.
TEST_CONSUMER_CONFIG: Final[Mapping[str, ConfigValue]] = MappingProxyType(
    {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 500,
        "auto.offset.reset": "earliest",
    }
)
TEST_PRODUCER_CONFIG: Final[Mapping[str, ConfigValue]] = MappingProxyType(
    {
        "enable.idempotence": True,
        "acks": "all",
    }
)


def consumer_config(bootstrap: str, group_id: str, **overrides: ConfigValue) -> dict[str, ConfigValue]:
    return {"bootstrap.servers": bootstrap, "group.id": group_id, **TEST_CONSUMER_CONFIG, **overrides}


def producer_config(bootstrap: str, **overrides: ConfigValue) -> dict[str, ConfigValue]:
    return {"bootstrap.servers": bootstrap, **TEST_PRODUCER_CONFIG, **overrides}


def kafka_ready(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """True when the broker accepts TCP and answers a metadata request."""
    if not accepts_connections(port, host):
        return False
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "socket.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def create_topic(
    bootstrap: str, topic: str, partitions: int = 1, *, exist_ok: bool = True, timeout: float = 10.0
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)], request_timeout=timeout
    )[topic]
    error = future.exception(timeout=timeout)
    # Drop the client now: a raised error's traceback keeps this frame, and so the client, alive
    # (reconnecting and logging) until the garbage collector finds the cycle.
    del admin, future
    if error is None or (exist_ok and _already_exists(error)):
        return
    raise error


def _already_exists(error: BaseException) -> bool:
    kafka_error = error.args[0] if error.args else None
    return isinstance(kafka_error, KafkaError) and kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS
