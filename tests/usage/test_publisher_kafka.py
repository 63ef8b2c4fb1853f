"""Usage records reach Kafka (a real Tansu broker) exactly as appended, through outages and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from router_impl.usage.kafka import KafkaTransport, producer_config
from router_impl.usage.outbox import LmdbOutbox
from router_impl.usage.publisher import Publisher
from router_impl.usage.sink import OutboxUsageSink
from tests.harness.kafka import create_topic
from tests.harness.services import KafkaBroker
from tests.harness.wait import eventually
from tests.usage.outbox_support import SCHEMA_PATH, consume, numbers_by_org, usage_record

ORGS = [f"org-{n}" for n in range(7)]


def new_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"usage-test-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, partitions=partitions)
    return topic


def kafka_publisher(outbox: LmdbOutbox, bootstrap: str, delivery_timeout: float = 30.0) -> Publisher:
    config = producer_config(
        bootstrap,
        delivery_timeout_seconds=delivery_timeout,
        extra={"reconnect.backoff.max.ms": 200, "retry.backoff.max.ms": 200},
    )
    return Publisher(
        outbox,
        KafkaTransport(config),
        publish_timeout=delivery_timeout + 2,
        backoff_initial=0.05,
        backoff_max=0.3,
        idle_seconds=0.1,
    )


async def test_every_record_is_consumed_once_per_record_id_in_order_per_organisation(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = new_topic(kafka_broker.bootstrap)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 26)
    sink = OutboxUsageSink(outbox, topic)
    records = [usage_record(ORGS[n % len(ORGS)], n) for n in range(300)]
    publisher = kafka_publisher(outbox, kafka_broker.bootstrap)
    await publisher.start()
    for record in records[:100]:  # some while the publisher runs, some in bursts
        await sink.emit(record)
    for record in records[100:]:
        await sink.emit(record)
    await eventually(lambda: outbox.backlog().count == 0, 20, what="the outbox to drain")
    await publisher.close()
    await outbox.close()

    consumed = consume(kafka_broker.bootstrap, topic, len(records))
    assert Counter(c.record["record_id"] for c in consumed) == Counter(str(r.record_id) for r in records)
    assert all(c.key == c.record["organization_id"].encode() for c in consumed)
    schema = json.loads(SCHEMA_PATH.read_text())
    for item in consumed:
        jsonschema.validate(item.record, schema)
    for org, numbers in numbers_by_org(consumed).items():
        assert numbers == sorted(numbers), org
    assert publisher.delivered == len(records)


@pytest.fixture
def private_broker(kafka_broker: KafkaBroker, tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, so stopping it does not disturb the session broker's users."""
    broker = KafkaBroker(workdir=tmp_path / "tansu").start()
    yield broker
    broker.close()


async def test_records_wait_on_disk_while_kafka_is_down_and_all_arrive_when_it_returns(
    private_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = new_topic(private_broker.bootstrap)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 26)
    sink = OutboxUsageSink(outbox, topic)
    publisher = kafka_publisher(outbox, private_broker.bootstrap, delivery_timeout=1.5)
    await publisher.start()
    for n in range(20):
        await sink.emit(usage_record(ORGS[n % len(ORGS)], n))
    await eventually(lambda: outbox.backlog().count == 0, 20, what="the first records to be delivered")

    private_broker.kill()  # SIGTERM waits ~5 s for Tansu to close client connections; the outage is the same
    during = [usage_record(ORGS[n % len(ORGS)], n) for n in range(20, 220)]
    for record in during:
        await sink.emit(record)
    await eventually(lambda: publisher.failing, 10, what="the publisher to notice the outage")
    first = outbox.backlog()
    await eventually(
        lambda: outbox.backlog().oldest_age_seconds > first.oldest_age_seconds + 0.5, 5, what="age"
    )
    backlog = outbox.backlog()
    assert backlog.count == len(during)
    assert backlog.stored_bytes > 0

    private_broker.start()  # memory storage: an empty broker, the topic must be created again
    create_topic(private_broker.bootstrap, topic, partitions=3)
    await eventually(lambda: outbox.backlog().count == 0, 30, what="the backlog to drain after the outage")
    assert not publisher.failing
    await publisher.close()
    await outbox.close()

    consumed = consume(private_broker.bootstrap, topic, len(during))
    ids = Counter(c.record["record_id"] for c in consumed)
    assert set(ids) == {str(r.record_id) for r in during}  # nothing lost; duplicates only by record_id
    first_seen: dict[str, list[int]] = {}
    for org, numbers in numbers_by_org(consumed).items():
        first_seen[org] = list(dict.fromkeys(numbers))
        assert first_seen[org] == sorted(first_seen[org]), org


APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from router_impl.usage.outbox import LmdbOutbox

    async def main(path, topic, count, sync):
        outbox = LmdbOutbox(path, max_bytes=1 << 26, sync=sync)
        await asyncio.gather(*(
            outbox.append(topic, b"org-%d" % (n % 5), b'{"record_id": "r-%d", "n": %d}' % (n, n))
            for n in range(count)
        ))
        print("appended", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "sync"))
    """
)


@pytest.mark.parametrize("sync", ["sync", "nosync"])
async def test_records_acknowledged_before_a_kill_9_are_delivered_by_the_next_publisher(
    kafka_broker: KafkaBroker, tmp_path: Path, sync: str
) -> None:
    topic = new_topic(kafka_broker.bootstrap, partitions=1)
    path = tmp_path / "outbox"
    count = 400
    child = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(path), topic, str(count), sync],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "appended"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    outbox = LmdbOutbox(path, max_bytes=1 << 26)
    assert outbox.backlog().count == count
    publisher = kafka_publisher(outbox, kafka_broker.bootstrap)
    assert await publisher.drain(20) == 0
    await publisher.close()
    await outbox.close()
    consumed = consume(kafka_broker.bootstrap, topic, count)
    assert sorted(c.record["n"] for c in consumed) == list(range(count))
