"""FR-14 audit trail, run against every adapter: LMDB in a temp dir and a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from router_impl.redis_mux import RedisMux
from router_impl.usage.audit import (
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditUnavailable,
    InvalidCursor,
    audit_record_json,
    decode_cursor,
    encode_cursor,
    event_from_json,
)
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.usage.audit_redis import RedisAuditLog
from tests.harness.clock import ManualClock

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86_400
RETENTION = 30 * DAY

Store = LmdbAuditLog | RedisAuditLog


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0.timestamp())


@pytest.fixture(
    params=[
        "lmdb",
        pytest.param("redis", marks=pytest.mark.services),
        pytest.param("redis-cluster", marks=pytest.mark.services),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    if request.param == "lmdb":
        lmdb_store = LmdbAuditLog(tmp_path / "audit", 64 << 20, RETENTION, clock=clock)
        yield lmdb_store
        lmdb_store.close()
    elif request.param == "redis-cluster":  # every write script stays in one slot (CROSSSLOT otherwise)
        nodes = request.getfixturevalue("redis_cluster").startup_nodes
        cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes])
        yield RedisAuditLog(cluster, RETENTION, key_prefix=f"t{uuid.uuid4().hex}:", clock=clock)
        await cluster.aclose()
    else:
        url = request.getfixturevalue("redis_server").url
        client = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=8, timeout=5))
        yield RedisAuditLog(client, RETENTION, key_prefix=f"t{uuid.uuid4().hex}:", clock=clock)
        await client.aclose()


def event(
    request_id: str,
    seconds: float = 0,
    *,
    org: str = "org-a",
    action: str = "REQUEST_ALLOWED",
    event_id: str | None = None,
    **fields: object,
) -> AuditEvent:
    extra: dict[str, object] = {"event_id": event_id} if event_id is not None else {}
    return AuditEvent(
        request_id=request_id,
        organization_id=org,
        api_key_id=f"key-{org}",
        action=action,  # type: ignore[arg-type]
        decision_reason="PRIMARY" if action == "REQUEST_ALLOWED" else "RATE_LIMITED",
        timestamp=T0 + timedelta(seconds=seconds),
        **extra,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def ids(page: AuditPage) -> list[str]:
    return [e.request_id for e in page.items]


async def record_all(store: Store, *events: AuditEvent) -> None:
    for item in events:
        await store.record(item)


# ---------------------------------------------------------------- by request


async def test_a_request_reads_as_its_latest_event_whatever_the_write_order(store: Store) -> None:
    denied = event("req-1", 2, action="REQUEST_DENIED", limit_state="RATE_LIMITED")
    allowed = event("req-1", 1, routing_backend_id="vllm-a", trace_id="a" * 32)
    await record_all(store, denied, allowed)  # the later event was written first

    assert await store.by_request("req-1", None) == denied
    later = event("req-1", 3, routing_backend_id="vllm-b")
    await store.record(later)
    assert await store.by_request("req-1", None) == later


async def test_every_field_survives_the_store(store: Store) -> None:
    full = event(
        "req-full",
        action="REQUEST_DENIED",
        limit_state="BUDGET_EXCEEDED",
        routing_backend_id="vllm-a",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        received_at=T0 - timedelta(milliseconds=250),
        completed_at=T0 + timedelta(microseconds=7),
        metadata={"endpoint": "/v1/inference", "model": "m"},
    )
    await store.record(full)
    assert await store.by_request("req-full", "org-a") == full


async def test_a_lookup_restricted_to_one_org_never_finds_another_orgs_request(store: Store) -> None:
    await store.record(event("req-b", org="org-b"))

    assert await store.by_request("req-b", "org-a") is None
    assert (await store.by_request("req-b", "org-b") or event("x")).organization_id == "org-b"
    assert await store.by_request("req-b", None) is not None
    assert await store.by_request("req-unknown", None) is None


async def test_another_org_reusing_a_request_id_never_hides_the_first_orgs_record(store: Store) -> None:
    mine = event("req-shared", 1, org="org-a")
    theirs = event("req-shared", 2, org="org-b", action="REQUEST_DENIED")
    await record_all(store, mine, theirs)  # org B's later event is the newest across orgs

    assert await store.by_request("req-shared", "org-a") == mine
    assert await store.by_request("req-shared", "org-b") == theirs
    # An admin (every organisation) reads the newest event of the id across organisations.
    assert await store.by_request("req-shared", None) == theirs
    newer_mine = event("req-shared", 3, org="org-a")
    await store.record(newer_mine)
    assert await store.by_request("req-shared", None) == newer_mine
    assert await store.by_request("req-shared", "org-b") == theirs


async def test_an_event_the_contract_cannot_carry_is_refused_and_not_stored(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.record(event("-not-an-identifier"))
    with pytest.raises(ValueError):
        await store.record(event("req-1", trace_id="not-hex"))
    assert await store.by_request("req-1", None) is None
    assert (await store.query(AuditQuery(organization_id=None))).items == ()


# ---------------------------------------------------------------- queries


async def test_queries_filter_by_org_and_action_newest_first(store: Store) -> None:
    await record_all(
        store,
        event("a-allowed", 1),
        event("b-allowed", 2, org="org-b"),
        event("a-denied", 3, action="REQUEST_DENIED"),
        event("a-policy", 4, action="POLICY_UPDATE", actor="key-admin"),
        event("anonymous-denied", 5, org="", action="REQUEST_DENIED"),
    )

    assert ids(await store.query(AuditQuery("org-a"))) == ["a-policy", "a-denied", "a-allowed"]
    assert ids(await store.query(AuditQuery("org-b"))) == ["b-allowed"]
    assert ids(await store.query(AuditQuery("org-a", action="REQUEST_DENIED"))) == ["a-denied"]
    assert ids(await store.query(AuditQuery(None, action="REQUEST_DENIED"))) == [
        "anonymous-denied",
        "a-denied",
    ]
    assert ids(await store.query(AuditQuery(None))) == [
        "anonymous-denied",
        "a-policy",
        "a-denied",
        "b-allowed",
        "a-allowed",
    ]
    assert ids(await store.query(AuditQuery("org-c"))) == []


async def test_the_time_window_includes_since_and_excludes_until(store: Store) -> None:
    await record_all(store, *(event(f"req-{s}", s) for s in range(1, 6)))
    at = lambda seconds: T0 + timedelta(seconds=seconds)  # noqa: E731

    window = await store.query(AuditQuery("org-a", since=at(2), until=at(4)))
    assert ids(window) == ["req-3", "req-2"]
    assert ids(await store.query(AuditQuery("org-a", since=at(4)))) == ["req-5", "req-4"]
    assert ids(await store.query(AuditQuery("org-a", until=at(2)))) == ["req-1"]
    # One millisecond either side of an event's instant.
    just = timedelta(milliseconds=1)
    assert ids(await store.query(AuditQuery("org-a", since=at(3) + just, until=at(4) + just))) == ["req-4"]
    assert (await store.query(AuditQuery("org-a", since=at(4), until=at(2)))).items == ()


async def test_pages_stay_stable_while_newer_events_arrive(store: Store) -> None:
    await record_all(store, *(event(f"req-{n:02d}", n) for n in range(25)))

    first = await store.query(AuditQuery("org-a", limit=10))
    await record_all(store, *(event(f"new-{n}", 100 + n) for n in range(5)))
    second = await store.query(AuditQuery("org-a", limit=10, cursor=first.next_cursor))
    await store.record(event("newest", 200))
    third = await store.query(AuditQuery("org-a", limit=10, cursor=second.next_cursor))

    seen = ids(first) + ids(second) + ids(third)
    assert seen == [f"req-{n:02d}" for n in reversed(range(25))]
    assert first.next_cursor and second.next_cursor and third.next_cursor is None
    assert ids(await store.query(AuditQuery("org-a", limit=3))) == ["newest", "new-4", "new-3"]


async def test_a_full_last_page_has_no_cursor(store: Store) -> None:
    await record_all(store, *(event(f"req-{n}", n) for n in range(4)))

    page = await store.query(AuditQuery("org-a", limit=2))
    last = await store.query(AuditQuery("org-a", limit=2, cursor=page.next_cursor))

    assert ids(last) == ["req-1", "req-0"]
    assert last.next_cursor is None


async def test_a_cursor_combines_with_the_window_and_filters(store: Store) -> None:
    await record_all(
        store,
        *(event(f"req-{n}", n, action="REQUEST_DENIED" if n % 2 else "REQUEST_ALLOWED") for n in range(10)),
    )
    query = AuditQuery("org-a", action="REQUEST_DENIED", until=T0 + timedelta(seconds=8), limit=2)

    first = await store.query(query)
    second = await store.query(replace(query, cursor=first.next_cursor))

    assert ids(first) == ["req-7", "req-5"]
    assert ids(second) == ["req-3", "req-1"]
    assert second.next_cursor is None


async def test_events_at_the_same_instant_are_ordered_by_event_id(store: Store) -> None:
    await record_all(
        store,
        event("req-b", event_id="ev-b"),
        event("req-c", event_id="ev-c"),
        event("req-a", event_id="ev-a"),
    )

    assert ids(await store.query(AuditQuery("org-a"))) == ["req-c", "req-b", "req-a"]
    pages, cursor = [], None
    for _ in range(3):
        page = await store.query(AuditQuery("org-a", limit=1, cursor=cursor))
        pages += ids(page)
        cursor = page.next_cursor
    assert pages == ["req-c", "req-b", "req-a"]
    assert cursor is None


async def test_a_cursor_no_store_issued_is_refused(store: Store) -> None:
    for cursor in ("AAAA", "bm90LWEtY3Vyc29y", "~~~", "MTIz"):  # "not-a-cursor", "123"
        with pytest.raises(InvalidCursor):
            await store.query(AuditQuery("org-a", cursor=cursor))


async def test_limits_outside_the_contract_are_refused(store: Store) -> None:
    for limit in (0, 1001):
        with pytest.raises(ValueError):
            await store.query(AuditQuery("org-a", limit=limit))


# ---------------------------------------------------------------- retention


async def test_reads_hide_events_past_retention_before_any_sweep(store: Store, clock: ManualClock) -> None:
    await record_all(store, event("old", -20 * DAY), event("recent", -1 * DAY))

    clock.advance(15 * DAY)  # "old" is now 35 days old

    assert ids(await store.query(AuditQuery("org-a"))) == ["recent"]
    assert ids(await store.query(AuditQuery(None))) == ["recent"]
    assert await store.by_request("old", None) is None
    assert await store.by_request("recent", None) is not None


async def test_the_sweep_deletes_events_past_retention(store: Store) -> None:
    await record_all(
        store,
        event("old-1", -25 * DAY),
        event("old-2", -22 * DAY, org="org-b", action="REQUEST_DENIED"),
        event("recent", -1 * DAY),
    )
    assert len((await store.query(AuditQuery(None))).items) == 3

    # Ten days on, the two old events are past the 30 days (the store's clock still reads T0, so
    # what disappears now was deleted, not hidden).
    assert await store.sweep(T0.timestamp() + 10 * DAY, batch_size=1) == 2

    assert ids(await store.query(AuditQuery(None))) == ["recent"]
    assert ids(await store.query(AuditQuery("org-b"))) == []
    assert ids(await store.query(AuditQuery("org-b", action="REQUEST_DENIED"))) == []
    assert await store.by_request("old-1", None) is None
    assert await store.by_request("old-2", "org-b") is None
    assert await store.by_request("recent", "org-a") is not None
    assert await store.sweep(T0.timestamp() + 10 * DAY) == 0
    if isinstance(store, LmdbAuditLog):
        assert len(store) == 1


# ---------------------------------------------------------------- wire form and failures


def test_the_wire_form_round_trips_and_matches_the_contract() -> None:
    original = event("req-1", 0.123456, metadata={"k": "v"}, actor="key-admin", action="LIMIT_RESET")
    data = audit_record_json(original)
    assert event_from_json(data) == original
    assert b'"timestamp":"2027-03-01T12:00:00.123456Z"' in data
    assert b"routing_backend_id" not in data  # unknown optional fields are absent, not null


def test_cursors_round_trip_inside_the_contract_pattern() -> None:
    import re

    for at in [(0, "a"), (1_800_000_000_123, "ev:with.dots-and:colons"), (10**14, "x" * 128)]:
        cursor = encode_cursor(at)
        assert re.fullmatch(r"[A-Za-z0-9._~=-]{1,512}", cursor)
        assert decode_cursor(cursor) == at


async def test_a_dead_redis_is_audit_unavailable() -> None:
    client = Redis.from_pool(BlockingConnectionPool.from_url("redis://127.0.0.1:1", timeout=1))
    store = RedisAuditLog(client)
    try:
        with pytest.raises(AuditUnavailable):
            await store.record(event("req-1"))
        with pytest.raises(AuditUnavailable):
            await store.by_request("req-1", None)
        with pytest.raises(AuditUnavailable):
            await store.query(AuditQuery(None))
    finally:
        await client.aclose()


async def test_concurrent_writes_on_the_pipelined_connection_each_land(redis_server) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    client, scripts = Redis.from_url(url), RedisMux.from_url(url, timeout=2.0)
    await client.flushdb()
    log = RedisAuditLog(client, 3600, scripts=scripts)
    now = datetime.now(UTC)
    events = [
        AuditEvent(f"grouped-{i}", "org-g", "key-g", "REQUEST_ALLOWED", "PRIMARY", now) for i in range(200)
    ]
    await asyncio.gather(*(log.record(e) for e in events))
    page = await log.query(AuditQuery("org-g", limit=1000))
    assert {e.request_id for e in page.items} == {e.request_id for e in events}
    await scripts.aclose()
    await client.aclose()


async def test_lmdb_concurrent_records_are_each_stored_and_a_cancelled_callers_event_too(
    tmp_path: Path,
) -> None:
    """The LMDB store group-commits the events of one turn of the loop: every caller's event lands,
    including one whose caller gave up waiting."""
    store = LmdbAuditLog(tmp_path / "audit", 64 << 20, RETENTION, clock=ManualClock(T0.timestamp()))
    events = [event(f"req-{n}", n) for n in range(40)]
    waiting = [asyncio.ensure_future(store.record(item)) for item in events]
    await asyncio.sleep(0)  # every record has queued its event
    waiting[0].cancel()
    await asyncio.gather(*waiting[1:])
    for item in events:
        assert (await store.by_request(item.request_id, "org-a")) == item
    store.close()
