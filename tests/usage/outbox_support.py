"""Helpers for the outbox and publisher tests: usage records, waiting, reading a topic back."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from router_contract.models import UsageRecord

from router_impl.usage.record import Usage, UsageFacts, build_record
from tests.harness.kafka import consumer_config

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "openapi" / "usage-record.schema.json"


def usage_record(org: str, n: int) -> UsageRecord:
    """A contract-valid record; ``metadata.n`` numbers it in append order."""
    return build_record(
        UsageFacts(
            request_id=f"req-{uuid.uuid4().hex}",
            organization_id=org,
            api_key_id=f"key-{org}",
            model="mock-model",
            backend_id="mock-a",
            usage=Usage(tokens_input=10 + n, tokens_output=n),
            latency_ms=12,
            cost_micro_usd=150,
            decision_reason="PRIMARY",
            endpoint="/v1/chat/completions",
            status_code=200,
            stream=False,
            trace_id="0" * 32,
            span_id="0" * 16,
            timestamp=datetime.now(UTC),
            metadata={"n": str(n)},
        )
    )


@dataclass(frozen=True)
class Consumed:
    key: bytes
    record: dict[str, Any]
    partition: int
    offset: int


def consume(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[Consumed]:
    """Every message of ``topic`` from the start, reading until ``count`` arrived and then until the
    end of each partition (so duplicates beyond ``count`` are seen too)."""
    consumer = Consumer(
        consumer_config(bootstrap, f"test-{uuid.uuid4().hex}", **{"enable.partition.eof": True})
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[Consumed] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(found) < count or len(at_end) < len(partitions)):
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                at_end.add(message.partition() or 0)
                continue
            at_end.discard(message.partition() or 0)
            found.append(
                Consumed(
                    message.key() or b"",
                    json.loads(message.value() or b""),
                    message.partition() or 0,
                    message.offset() or 0,
                )
            )
        return found
    finally:
        consumer.close()


def in_log_order(consumed: list[Consumed]) -> list[Consumed]:
    return sorted(consumed, key=lambda c: (c.partition, c.offset))


def numbers_by_org(consumed: list[Consumed]) -> dict[str, list[int]]:
    """Per organisation, the ``metadata.n`` of its records in the order the topic holds them."""
    found: dict[str, list[int]] = {}
    for item in in_log_order(consumed):
        found.setdefault(item.record["organization_id"], []).append(int(item.record["metadata"]["n"]))
    return found
