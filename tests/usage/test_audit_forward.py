"""ForwardedAuditLog: every event goes to the store and, as the same bytes, to the usage outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from router_impl.usage.audit import AuditEvent, AuditUnavailable, ForwardedAuditLog, audit_record_json
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.usage.outbox import LmdbOutbox

TOPIC = "audit.events.v1"


def allowed(request_id: str) -> AuditEvent:
    return AuditEvent(
        request_id=request_id,
        organization_id="org-a",
        api_key_id="key-a",
        action="REQUEST_ALLOWED",
        decision_reason="PRIMARY",
        # Now, not a fixed day: the store keeps events for its retention period counted from today, so
        # a fixed date failed the suite run a year ahead (make test-date).
        timestamp=datetime.now(UTC).replace(microsecond=0),
    )


async def test_the_store_and_the_outbox_get_the_same_event(tmp_path: Path) -> None:
    store = LmdbAuditLog(tmp_path / "audit", 64 << 20)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20, sync=False)
    log = ForwardedAuditLog(store, lambda key, value: outbox.append(TOPIC, key, value))
    event = allowed("req-1")
    await log.record(event)
    assert await log.by_request("req-1", "org-a") == event
    (entry,) = await outbox.read(10)
    assert (entry.topic, entry.key, entry.value) == (TOPIC, b"org-a", audit_record_json(event))
    await outbox.close()
    store.close()


async def test_a_failing_store_still_lets_the_forward_finish_and_reports_the_failure(tmp_path: Path) -> None:
    class Broken(LmdbAuditLog):
        async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
            raise AuditUnavailable("disk gone")

    store = Broken(tmp_path / "audit", 64 << 20)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20, sync=False)
    log = ForwardedAuditLog(store, lambda key, value: outbox.append(TOPIC, key, value))
    with pytest.raises(AuditUnavailable):
        await log.record(allowed("req-2"))
    assert outbox.backlog().count == 1  # the Kafka copy was committed all the same
    await outbox.close()
    store.close()
