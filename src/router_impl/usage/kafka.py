"""The Kafka transport: an idempotent confluent-kafka producer, acks=all, keyed by organisation.

A batch is produced and the producer polled until every delivery report arrived, all on a worker thread
(librdkafka's calls block; the event loop never waits on them). Only entries with a successful report
count as delivered. The idempotent producer keeps order within a partition (up to 5 requests in flight),
and the organisation key keeps each organisation on one partition. The message timestamp is the time
the entry was appended, i.e. when the request completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from router_impl.usage.outbox_entry import OutboxEntry

log = structlog.get_logger("router.usage.kafka")

_POLL_SLICE_SECONDS = 0.05


def producer_config(
    bootstrap: str, *, delivery_timeout_seconds: float = 30.0, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "api-router-usage",
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 5,
        # librdkafka retries within this time; after it, the report is an error and the outbox retries.
        "message.timeout.ms": int(delivery_timeout_seconds * 1000),
        "logger": logging.getLogger("router.kafka"),
        **(extra or {}),
    }


class KafkaTransport:
    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._config = {**config, "error_cb": self._on_client_error}
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._last_client_error = ""
        self._fatal = False  # set by error_cb (served by poll) or by a produce refused as fatal

    async def publish(self, entries: Sequence[OutboxEntry], within_seconds: float) -> set[int]:
        return await asyncio.to_thread(self._publish_blocking, entries, within_seconds)

    def _publish_blocking(self, entries: Sequence[OutboxEntry], within_seconds: float) -> set[int]:
        producer = self._producer_now()
        deadline = time.monotonic() + within_seconds
        reports: list[tuple[int, KafkaError | None]] = []
        produced = 0
        try:
            for entry in entries:
                if not self._produce(producer, entry, reports, deadline):
                    break
                produced += 1
            while len(reports) < produced and time.monotonic() < deadline:
                producer.poll(min(_POLL_SLICE_SECONDS, max(deadline - time.monotonic(), 0.0)))
        except KafkaException as exc:  # poll raises the producer's fatal error
            log.error("kafka_producer_failed", error=str(exc))
            self._fatal = self._fatal or (bool(exc.args) and _is_fatal(exc.args[0]))
        delivered = {seq for seq, error in reports if error is None}
        errors = [error for _, error in reports if error is not None]
        if errors:
            first = errors[0]
            log.warning("kafka_delivery_failed", failed=len(errors), code=first.name(), reason=first.str())
        if self._fatal or any(_is_fatal(error) for error in errors):
            self._discard_producer()
        if len(reports) < produced:
            log.warning(
                "kafka_delivery_unconfirmed",
                unconfirmed=produced - len(reports),
                within_seconds=within_seconds,
            )
        if len(delivered) == len(entries):
            self._last_client_error = ""
        return delivered

    def _produce(
        self,
        producer: Producer,
        entry: OutboxEntry,
        reports: list[tuple[int, KafkaError | None]],
        deadline: float,
    ) -> bool:
        def on_delivery(error: KafkaError | None, _message: Message, seq: int = entry.seq) -> None:
            reports.append((seq, error))

        while True:
            try:
                producer.produce(
                    entry.topic,
                    entry.value,
                    entry.key,
                    on_delivery=on_delivery,
                    timestamp=int(entry.appended_at * 1000),
                )
                return True
            except BufferError:  # the local queue is full: serve reports, then try again
                if time.monotonic() >= deadline:
                    return False
                producer.poll(_POLL_SLICE_SECONDS)
            except KafkaException as exc:
                log.error("kafka_produce_failed", topic=entry.topic, error=str(exc))
                self._fatal = self._fatal or (bool(exc.args) and _is_fatal(exc.args[0]))
                return False

    def _producer_now(self) -> Producer:
        if self._producer is None:
            self._producer = self._factory(dict(self._config))
        return self._producer

    def _discard_producer(self) -> None:
        """After a fatal error (e.g. a broker that lost the idempotent producer's state: unknown
        producer id) librdkafka refuses every message; a new producer gets a new id. Its entries are
        still in the outbox and go out again, in order, with the next round."""
        log.error("kafka_producer_reset", reason="fatal error")
        self._fatal = False
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaException):
                producer.purge()
                producer.flush(0)

    def _on_client_error(self, error: KafkaError) -> None:
        if _is_fatal(error):
            self._fatal = True
        # librdkafka reports every reconnect while a broker is down; log each kind once per change.
        if error.name() != self._last_client_error:
            self._last_client_error = error.name()
            log.warning("kafka_client_error", code=error.name(), reason=error.str(), fatal=error.fatal())

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # Undelivered entries stay in the outbox; do not wait for them here.
            await asyncio.to_thread(producer.flush, 1.0)


# The broker refuses this idempotent producer's identity (id, epoch, sequence) and will refuse every
# later message of it, yet librdkafka does not flag these fatal: after a 30 s broker freeze Tansu
# answered PRODUCER_FENCED to every round, for ever. A new producer gets a new id.
_PRODUCER_STATE_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    }
)


def _is_fatal(error: object) -> bool:
    return isinstance(error, KafkaError) and (
        error.fatal() or error.code() == KafkaError._FATAL or error.code() in _PRODUCER_STATE_ERRORS
    )
