"""FR-14 audit API on a real router: one request's record, pages of events, organisation isolation.

The request pipeline does not write audit events yet, so the tests write them into the router's own
store (its LMDB data dir, which LMDB shares between processes, or its Redis) while it runs, then read
them back through the API. Every response is validated against the contract by the ``clients``
fixture. Each test seeds events inside a time window of its own and queries only that window, so
events other tests (or the pipeline, later) write never disturb its assertions.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from router_impl.settings import Settings
from router_impl.usage.audit import AuditEvent
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.usage.audit_redis import RedisAuditLog
from tests.e2e.conftest import KEYS, MODEL, ORG, Clients, auth
from tests.harness.config_docs import key_record
from tests.harness.errors import error_code
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import wait_until

OTHER_ORG = "org-audit-other"
OPS_ORG = "org-audit-ops"
AUDIT_ADMIN = "rk_e2e_audit_admin"
AUDIT_OTHER = "rk_e2e_audit_other"
EXTRA_KEYS = (
    key_record("key-audit-admin", OPS_ORG, AUDIT_ADMIN, ["audit", "admin"]),
    key_record("key-audit-other", OTHER_ORG, AUDIT_OTHER, ["audit", "inference"]),
)
USER = KEYS["user"]  # scopes inference + audit, organisation ORG
EVENTS = "/v1/audit/events"
_windows = itertools.count()


@pytest.fixture(scope="module", params=["lmdb", pytest.param("redis", marks=pytest.mark.services)])
def audit_router(
    request: pytest.FixtureRequest,
    start_router: Callable[..., RouterProcess],
    make_config: Callable[..., Any],
) -> RouterProcess:
    env = (
        {"ROUTER_REDIS_URL": request.getfixturevalue("redis_server").url} if request.param == "redis" else {}
    )
    return start_router(env=env, config=make_config(extra_keys=EXTRA_KEYS))


@pytest.fixture(scope="module")
async def store(audit_router: RouterProcess) -> AsyncIterator[LmdbAuditLog | RedisAuditLog]:
    """The router's own audit store, opened from this process."""
    redis_url = audit_router.extra_env.get("ROUTER_REDIS_URL")
    if redis_url is None:
        map_size = Settings.model_fields["audit_map_size_bytes"].default
        lmdb_store = LmdbAuditLog(audit_router.data_dir / "audit", map_size)
        yield lmdb_store
        lmdb_store.close()
    else:
        client = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=4, timeout=5))
        yield RedisAuditLog(client)
        await client.aclose()


@pytest.fixture
def http(clients: Clients, audit_router: RouterProcess) -> Iterator[httpx.Client]:
    yield clients.http(audit_router)


@pytest.fixture
def base() -> datetime:
    """The start of this test's own one-minute window, an hour or more ago (well within retention)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(hours=1, minutes=next(_windows))


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def window(base: datetime) -> dict[str, str]:
    return {"since": iso(base), "until": iso(base + timedelta(minutes=1))}


def event(base: datetime, seconds: float, org: str = ORG, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "organization_id": org,
        "api_key_id": "key-user" if org == ORG else f"key-{org}",
        "action": "REQUEST_ALLOWED",
        "decision_reason": "PRIMARY",
        "timestamp": base + timedelta(seconds=seconds),
        **fields,
    }
    return AuditEvent(**values)


def request_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["request_id"] for item in response.json()["items"]]


def list_events(http: httpx.Client, key: str, **params: Any) -> httpx.Response:
    return http.get(EVENTS, params=params, headers=auth(key))


# ---------------------------------------------------------------- one request


async def test_a_request_record_shows_its_final_decision_limit_state_and_timestamps(http, store, base):
    allowed = event(
        base, 1, routing_backend_id="mock-a", received_at=base, trace_id="4bf92f3577b34da6a3ce929d0e0e4736"
    )
    denied = event(
        base,
        2,
        request_id=allowed.request_id,
        action="REQUEST_DENIED",
        decision_reason="BUDGET_EXCEEDED",
        limit_state="BUDGET_EXCEEDED",
        received_at=base + timedelta(seconds=2),
        completed_at=base + timedelta(seconds=2, milliseconds=3),
        metadata={"endpoint": "/v1/inference"},
    )
    await store.record(allowed)
    await store.record(denied)

    response = http.get(f"/v1/audit/requests/{allowed.request_id}", headers=auth(USER))

    assert response.status_code == 200, response.text
    assert response.json() == {
        "event_id": denied.event_id,
        "request_id": allowed.request_id,
        "organization_id": ORG,
        "api_key_id": "key-user",
        "action": "REQUEST_DENIED",
        "decision_reason": "BUDGET_EXCEEDED",
        "limit_state": "BUDGET_EXCEEDED",
        "received_at": iso(base + timedelta(seconds=2)),
        "completed_at": iso(base + timedelta(seconds=2, milliseconds=3)),
        "metadata": {"endpoint": "/v1/inference"},
        "timestamp": iso(base + timedelta(seconds=2)),
    }


async def test_an_unknown_or_another_orgs_request_is_not_found(http, store, base):
    theirs = event(base, 1, org=OTHER_ORG)
    await store.record(theirs)
    path = f"/v1/audit/requests/{theirs.request_id}"

    for response in (
        http.get(path, headers=auth(USER)),
        http.get(f"/v1/audit/requests/{uuid.uuid4()}", headers=auth(USER)),
    ):
        assert (response.status_code, error_code(response)) == (404, "REQUEST_NOT_FOUND")
    assert http.get(path, headers=auth(AUDIT_OTHER)).json()["organization_id"] == OTHER_ORG
    assert http.get(path, headers=auth(AUDIT_ADMIN)).json()["event_id"] == theirs.event_id


def test_another_org_reusing_a_request_id_never_hides_the_first_orgs_record(http):
    """Issue 16 finding 6: org B's request with org A's request id (the pipeline writes both events)."""
    request_id = str(uuid.uuid4())
    path = f"/v1/audit/requests/{request_id}"
    body = {"request_id": request_id, "model": MODEL, "payload": "mine"}
    assert http.post("/v1/inference", json=body, headers=auth(USER)).status_code == 200
    assert wait_until(lambda: http.get(path, headers=auth(USER)).status_code == 200)
    theirs = http.post("/v1/inference", json={**body, "payload": "theirs"}, headers=auth(AUDIT_OTHER))
    assert theirs.status_code == 200, theirs.text
    assert wait_until(lambda: http.get(path, headers=auth(AUDIT_OTHER)).status_code == 200)

    mine = http.get(path, headers=auth(USER))
    assert mine.status_code == 200, mine.text
    assert (mine.json()["organization_id"], mine.json()["api_key_id"]) == (ORG, "key-user")
    assert http.get(path, headers=auth(AUDIT_OTHER)).json()["organization_id"] == OTHER_ORG
    # An admin reads the id's newest event across organisations (every event is in the list).
    assert http.get(path, headers=auth(AUDIT_ADMIN)).json()["organization_id"] == OTHER_ORG


# ---------------------------------------------------------------- listing


async def test_a_key_lists_its_own_org_and_is_forbidden_another(http, store, base):
    mine, theirs = event(base, 1), event(base, 2, org=OTHER_ORG)
    await store.record(mine)
    await store.record(theirs)

    assert request_ids(list_events(http, USER.secret, **window(base))) == [mine.request_id]
    assert request_ids(list_events(http, USER.secret, organization_id=ORG, **window(base))) == [
        mine.request_id
    ]
    forbidden = list_events(http, USER.secret, organization_id=OTHER_ORG, **window(base))
    assert (forbidden.status_code, error_code(forbidden)) == (403, "FORBIDDEN")


async def test_an_admin_sees_every_org(http, store, base):
    mine, theirs = event(base, 1), event(base, 2, org=OTHER_ORG)
    policy = event(
        base,
        3,
        org=OPS_ORG,
        action="POLICY_UPDATE",
        actor="key-audit-admin",
        decision_reason="models/m: replace",
    )
    for item in (mine, theirs, policy):
        await store.record(item)

    everything = list_events(http, AUDIT_ADMIN, **window(base))
    assert request_ids(everything) == [policy.request_id, theirs.request_id, mine.request_id]
    assert everything.json()["items"][0]["actor"] == "key-audit-admin"
    assert request_ids(list_events(http, AUDIT_ADMIN, organization_id=OTHER_ORG, **window(base))) == [
        theirs.request_id
    ]
    assert request_ids(list_events(http, AUDIT_ADMIN, action="POLICY_UPDATE", **window(base))) == [
        policy.request_id
    ]


async def test_pages_follow_next_cursor_to_the_end_while_newer_events_arrive(http, store, base):
    seeded = [event(base, n) for n in range(7)]
    for item in seeded:
        await store.record(item)

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3, **window(base)}
    pages = 0
    while True:
        response = list_events(http, USER.secret, **params)
        seen += request_ids(response)
        pages += 1
        await store.record(event(base, 30 + pages))  # newer than every page still to come
        cursor = response.json().get("next_cursor")
        if cursor is None:
            break
        params["cursor"] = cursor

    assert seen == [item.request_id for item in reversed(seeded)]
    assert pages == 3


async def test_a_cursor_outside_the_pattern_is_400_and_one_matching_no_position_is_an_empty_page(
    http, store, base
):
    await store.record(event(base, 1))

    refused = list_events(http, USER.secret, cursor="not a cursor!", **window(base))
    unknown = list_events(http, USER.secret, cursor="AAAA", **window(base))

    assert (refused.status_code, error_code(refused)) == (400, "VALIDATION_ERROR")
    assert request_ids(unknown) == []
    assert "next_cursor" not in unknown.json()


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-13-01T00:00:00Z"},
        {"limit": 0},
        {"limit": 1001},
        {"action": "REQUEST_MAYBE"},
        {"organization_id": "-not-an-id"},
    ],
)
def test_bad_query_parameters_are_400(http, params):
    response = list_events(http, USER.secret, **params)

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")


# ---------------------------------------------------------------- credentials

# Fixed, so every pytest-xdist worker collects the same test ids.
ANY_REQUEST = "/v1/audit/requests/0f8e4a52-6b1d-4c3e-9a7f-2d5b8c1e0a93"


@pytest.mark.parametrize("path", [EVENTS, ANY_REQUEST], ids=["events", "request"])
def test_a_key_without_the_audit_scope_is_forbidden(http, path):
    for key in (KEYS["admin"], KEYS["restricted"]):  # admin alone, inference alone
        response = http.get(path, headers=auth(key))
        assert (response.status_code, error_code(response)) == (403, "FORBIDDEN")


@pytest.mark.parametrize("path", [EVENTS, ANY_REQUEST], ids=["events", "request"])
def test_no_key_is_401(http, path):
    response = http.get(path)

    assert response.status_code == 401
    assert error_code(response) in {"AUTH_INVALID", "INVALID_API_KEY"}
    assert http.get(path, headers=auth("rk_nobody")).status_code == 401
