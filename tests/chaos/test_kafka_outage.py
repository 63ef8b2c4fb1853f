"""Chaos: the Kafka broker stops answering for 30 s under load.

The broker is frozen (SIGSTOP), not killed: Tansu keeps topics in memory only, so a restart would
lose what it had already confirmed, which a real Kafka keeps. Requests are served throughout; their
usage records wait in the router's LMDB outbox (the backlog gauge rises) and all reach the topic
once the broker answers again (the gauge falls back to 0). Every acknowledged request id is
reconciled against the topic.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]  # no stubs installed

from tests.harness.backend import MockBackend
from tests.harness.chaos_load import BoundedLoad, Shot, summary
from tests.harness.chaos_pipeline import (
    AUDIT_TOPIC,
    PER_REQUEST_TOKENS,
    USAGE_TOPIC,
    ChaosStack,
    PipelineRouterFactory,
    chat_body,
    new_org,
    pipeline_config,
    records_by_request,
)
from tests.harness.wait import wait_until

OUTAGE_S = 30.0
# The round in flight at the thaw ends (3 s delivery timeout + 5 s margin), then the publisher's
# backoff, doubled by every failed round of the outage, runs out (at most 10 s).
DRAIN_WITHIN_S = 25.0
MAX_LATENCY_S = 2.0
BACKLOG = "router_usage_outbox_records"
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "openapi" / "usage-record.schema.json").read_text()
)


def test_kafka_frozen_30s_loses_no_usage_record_and_the_outbox_backlog_rises_then_drains(
    chaos_stack: ChaosStack, pipeline_router: PipelineRouterFactory, backend: MockBackend
) -> None:
    kafka = chaos_stack.kafka
    org = new_org("chaos-kafka", budgets={"daily_tokens": 10_000_000})
    router = pipeline_router(pipeline_config({"chaos-a": backend}, "chaos-a", [org]))

    def shot(n: int) -> Shot:
        request_id = f"kafka-{n}-{uuid.uuid4().hex[:6]}"
        return Shot(org.id, request_id, chat_body(), org.headers(request_id))

    backlog: list[tuple[float, float]] = []  # (seconds since the load began, records waiting)
    with BoundedLoad(router.base_url, shot, concurrency=8, rate=60) as load:
        time.sleep(2.0)
        before = router.metric(BACKLOG)
        frozen_at = load.now()
        assert kafka.pid is not None
        os.kill(kafka.pid, signal.SIGSTOP)
        try:
            while load.now() < frozen_at + OUTAGE_S:
                backlog.append((load.now(), router.metric(BACKLOG)))
                time.sleep(0.5)
        finally:
            os.kill(kafka.pid, signal.SIGCONT)
        thawed_at = load.now()
        time.sleep(2.0)
    drained = wait_until(lambda: router.metric(BACKLOG) == 0, timeout=DRAIN_WITHIN_S)
    drain_s = load.now() - thawed_at
    outcomes = load.outcomes
    acknowledged = {o.request_id for o in outcomes if o.status == 200}
    during = [o for o in load.between(frozen_at, thawed_at) if o.status == 200]
    records = records_by_request(kafka.bootstrap, USAGE_TOPIC, acknowledged)
    events = records_by_request(kafka.bootstrap, AUDIT_TOPIC, acknowledged)
    peak = max(waiting for _, waiting in backlog)
    missing = acknowledged - records.keys()
    print(
        summary(
            "kafka-30s",
            outcomes,
            acknowledged=len(acknowledged),
            served_while_frozen=len(during),
            backlog_before=int(before),
            backlog_peak=int(peak),
            drained_after=f"{drain_s:.1f}s",
            records_missing=len(missing),
            duplicate_deliveries=sum(len(found) - 1 for found in records.values()),
        )
    )

    assert {o.status for o in outcomes} == {200}, [o for o in outcomes if o.status != 200][:5]
    assert max(o.latency_s for o in outcomes) < MAX_LATENCY_S
    assert len(during) >= 0.5 * 60 * OUTAGE_S  # the load kept going
    # The backlog gauge: low before, at least one record per request served while frozen, 0 after.
    assert before < 0.1 * peak
    assert peak >= len(during)
    assert next(w for t, w in backlog if t > frozen_at + 5) > 0
    assert drained, f"the outbox still holds {router.metric(BACKLOG)} records"
    # Zero records lost; each request billed once (redelivery repeats the same record_id).
    assert not missing, f"{len(missing)} acknowledged requests have no usage record"
    assert all(len({r["record_id"] for r in found}) == 1 for found in records.values())
    for found in records.values():
        jsonschema.validate(found[0], SCHEMA)
    assert {found[0]["tokens_input"] + found[0]["tokens_output"] for found in records.values()} == {
        PER_REQUEST_TOKENS
    }
    assert acknowledged - events.keys() == set(), "acknowledged requests without an audit event"
