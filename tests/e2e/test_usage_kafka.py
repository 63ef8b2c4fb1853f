"""US-4 end to end: a router's usage records and audit events reach Kafka (Tansu) exactly as the
contract defines them, one per request, surviving a broker outage and a SIGKILL of the router.
(The same under load, with the broker frozen and the router killed mid-load: tests/chaos.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import KEYS, MODEL, auth
from tests.harness.bodies import chat_body
from tests.harness.kafka import create_topic
from tests.harness.ports import free_port
from tests.harness.records import request_ref
from tests.harness.router_proc import RouterProcess
from tests.harness.services import KafkaBroker
from tests.harness.wait import wait_until
from tests.usage.outbox_support import consume

CHAT = "/v1/chat/completions"
USAGE_TOPIC = "usage.records.v1"
AUDIT_TOPIC = "audit.events.v1"
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "openapi" / "usage-record.schema.json").read_text()
)


async def send(router: RouterProcess, request_ids: list[str], concurrency: int = 20) -> list[httpx.Response]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=router.base_url, trust_env=False, timeout=20) as client:

        async def one(request_id: str) -> httpx.Response:
            async with limit:
                headers = {**auth(KEYS["user"]), "X-Request-ID": request_id}
                return await client.post(
                    CHAT, json=chat_body(MODEL, f"count words of {request_id}"), headers=headers
                )

        return await asyncio.gather(*(one(r) for r in request_ids))


def records_of(bootstrap: str, topic: str, request_ids: set[str], expected: int) -> list[dict[str, Any]]:
    """The topic's messages for these requests (the topic is shared by the session's tests)."""
    found: list[dict[str, Any]] = []
    for _ in range(20):
        found = [
            m.record for m in consume(bootstrap, topic, 0, timeout=5) if request_ref(m.record) in request_ids
        ]
        if len(found) >= expected:
            break
    return found


@pytest.fixture(scope="module")
def topics(kafka_broker: KafkaBroker) -> str:
    for topic in (USAGE_TOPIC, AUDIT_TOPIC):
        create_topic(kafka_broker.bootstrap, topic, partitions=2)
    return kafka_broker.bootstrap


def test_every_request_yields_one_schema_valid_record_and_tokens_reconcile_exactly(
    start_router: Callable[..., RouterProcess], topics: str
) -> None:
    router = start_router(env={"ROUTER_KAFKA_BOOTSTRAP": topics})
    request_ids = [f"kafka-{uuid.uuid4().hex[:12]}" for _ in range(40)]
    answers = asyncio.run(send(router, request_ids))
    assert [a.status_code for a in answers] == [200] * len(request_ids)
    client_tokens = sum(a.json()["usage"]["total_tokens"] for a in answers)

    records = records_of(topics, USAGE_TOPIC, set(request_ids), len(request_ids))
    for record in records:
        jsonschema.validate(record, SCHEMA)
    assert Counter(request_ref(r) for r in records) == Counter(request_ids)  # one each, none lost
    assert sum(r["tokens_input"] + r["tokens_output"] for r in records) == client_tokens
    assert {r["organization_id"] for r in records} == {KEYS["user"].record["organization_id"]}

    events = records_of(topics, AUDIT_TOPIC, set(request_ids), len(request_ids))
    assert Counter(e["request_id"] for e in events if e["action"] == "REQUEST_ALLOWED") == Counter(
        request_ids
    )


def test_records_wait_on_disk_through_a_kafka_outage_and_a_sigkill_then_all_arrive(
    start_router: Callable[..., RouterProcess], topics: str
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # Kafka "down": nothing listens there
    router = start_router(
        env={"ROUTER_KAFKA_BOOTSTRAP": nowhere, "ROUTER_KAFKA_DELIVERY_TIMEOUT_SECONDS": "2"}
    )
    request_ids = [f"outage-{uuid.uuid4().hex[:12]}" for _ in range(25)]
    answers = asyncio.run(send(router, request_ids))
    assert [a.status_code for a in answers] == [200] * len(request_ids)
    ready = httpx.get(f"{router.base_url}/v1/status/readyz", trust_env=False).json()
    outbox = next(c for c in ready["checks"] if c["name"] == "usage_outbox")
    assert "backlog" in outbox["details"]
    assert nowhere not in json.dumps(ready)  # no hosts in health bodies

    router.kill()  # SIGKILL: every acknowledged request's record is already on disk
    router.extra_env["ROUTER_KAFKA_BOOTSTRAP"] = topics
    router.start()
    records = records_of(topics, USAGE_TOPIC, set(request_ids), len(request_ids))
    assert Counter(request_ref(r) for r in records).keys() == set(request_ids)
    assert wait_until(lambda: _backlog_empty(router), timeout=10)


def _backlog_empty(router: RouterProcess) -> bool:
    ready = httpx.get(f"{router.base_url}/v1/status/readyz", trust_env=False).json()
    outbox = next(c for c in ready["checks"] if c["name"] == "usage_outbox")
    return "backlog 0 records" in outbox["details"]


def test_a_full_outbox_refuses_billable_requests_with_503_and_readiness_says_why(
    start_router: Callable[..., RouterProcess],
) -> None:
    router = start_router(
        env={
            "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "ROUTER_OUTBOX_MAX_BYTES": str(1 << 20),
            "ROUTER_OUTBOX_SYNC": "false",
        }
    )
    statuses: list[int] = []
    for _ in range(40):  # ~1.2 KB per request (record + audit event): full after ~900
        answers = asyncio.run(
            send(router, [f"full-{uuid.uuid4().hex[:12]}" for _ in range(50)], concurrency=50)
        )
        statuses.extend(a.status_code for a in answers)
        if 503 in statuses:
            break
    assert 503 in statuses
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert refused.headers["Retry-After"] == "30"
    ready = httpx.get(f"{router.base_url}/v1/status/readyz", trust_env=False)
    assert ready.status_code == 503
    outbox = next(c for c in ready.json()["checks"] if c["name"] == "usage_outbox")
    assert outbox["status"] == "fail"
