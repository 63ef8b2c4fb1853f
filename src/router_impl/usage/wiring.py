"""Builds the usage outbox, its publisher (Kafka when configured, else JSON Lines files) and the sink."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router_impl.lifecycle import Lifecycle
from router_impl.process_health import CheckStatus
from router_impl.settings import Settings
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.jsonl import JsonlTransport
from router_impl.usage.kafka import KafkaTransport, producer_config
from router_impl.usage.outbox import LmdbOutbox
from router_impl.usage.publisher import Publisher, Transport
from router_impl.usage.sink import OutboxUsageSink

# How long a publish round waits for delivery reports beyond librdkafka's own delivery timeout.
_REPORT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class UsageParts:
    sink: OutboxUsageSink
    outbox: LmdbOutbox
    publisher: Publisher
    usage_topic: str
    audit_topic: str

    async def readiness(self) -> tuple[CheckStatus, str]:
        """``fail`` while the outbox refuses billable traffic, ``warn`` past the warning size or age."""
        backlog = self.outbox.backlog()
        details = (
            f"usage backlog {backlog.count} records, {backlog.stored_bytes} bytes, "
            f"oldest {backlog.oldest_age_seconds:.1f} s"
        )
        if self.publisher.failing:
            details += "; publisher retrying"
        status = self.outbox.status()
        if status == "full":
            return "fail", details + "; outbox full: billable requests refused until it drains"
        # A failing publisher (usage bus unreachable) still serves, through the outbox: degraded.
        return ("warn" if status == "warn" or self.publisher.failing else "pass"), details


def build_usage(
    settings: Settings,
    lifecycle: Lifecycle,
    on_round: Callable[[str, int, int], None] | None = None,
    tracer: Tracing | None = None,
) -> UsageParts:
    """Open the outbox in this (worker) process; the publisher starts and drains with ``lifecycle``."""
    outbox = LmdbOutbox(
        settings.data_dir / "outbox",
        max_bytes=settings.outbox_max_bytes,
        sync=settings.outbox_fsync,
        warn_fraction=settings.outbox_warn_fraction,
        warn_age_seconds=settings.outbox_warn_age_seconds,
    )
    transport: Transport
    publish_timeout = 30.0
    if settings.kafka_bootstrap:
        delivery = settings.kafka_delivery_timeout_seconds
        transport = KafkaTransport(
            producer_config(settings.kafka_bootstrap, delivery_timeout_seconds=delivery)
        )
        publish_timeout = delivery + _REPORT_MARGIN_SECONDS
    else:
        transport = JsonlTransport(
            settings.data_dir / "usage",
            {settings.usage_topic: "usage", settings.audit_topic: "audit"},
            fsync=settings.outbox_fsync,
        )
    publisher = Publisher(
        outbox, transport, publish_timeout=publish_timeout, on_round=on_round, tracer=tracer
    )

    async def stop() -> None:
        try:
            await publisher.drain(settings.outbox_drain_seconds)
        finally:
            await publisher.close()
            await outbox.close()

    lifecycle.on_start(publisher.start)
    lifecycle.on_stop(stop)
    return UsageParts(
        sink=OutboxUsageSink(outbox, settings.usage_topic),
        outbox=outbox,
        publisher=publisher,
        usage_topic=settings.usage_topic,
        audit_topic=settings.audit_topic,
    )
