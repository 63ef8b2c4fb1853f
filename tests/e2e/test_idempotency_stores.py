"""FR-7 on every idempotency store: concurrent retries reach the backend once, replays are never billed.

Stores: the embedded default (LMDB), ROUTER_IDEMPOTENCY_STORE=memory, and Redis (ROUTER_REDIS_URL),
which is also shared by replicas: two routers on one Redis see each other's keys and signatures.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    KEYS,
    MODEL,
    SIGNING_SECRET,
    auth,
    dumps,
    records_for,
    signed_headers,
    usage_records,
)
from tests.harness.bodies import chat_body
from tests.harness.errors import error_code
from tests.harness.records import request_ref
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import wait_until

CHAT = "/v1/chat/completions"
INFERENCE = "/v1/inference"
CONCURRENT = 20


@pytest.fixture(scope="module")
def memory_router(start_router: Callable[..., RouterProcess]) -> RouterProcess:
    return start_router(env={"ROUTER_IDEMPOTENCY_STORE": "memory"})


@pytest.fixture(scope="module")
def redis_router(start_router: Callable[..., RouterProcess], redis_server) -> RouterProcess:
    return start_router(env={"ROUTER_REDIS_URL": redis_server.url})


@pytest.fixture(scope="module")
def redis_router_b(start_router: Callable[..., RouterProcess], redis_server) -> RouterProcess:
    return start_router(env={"ROUTER_REDIS_URL": redis_server.url})


@pytest.fixture(params=["lmdb", "memory", "redis"])
def store_router(request: pytest.FixtureRequest) -> RouterProcess:
    name = {"lmdb": "router", "memory": "memory_router", "redis": "redis_router"}[request.param]
    return request.getfixturevalue(name)


def request_for(path: str, key: str, text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of one idempotent request: the key is `request_id` or `Idempotency-Key`."""
    if path == INFERENCE:
        return {"request_id": key, "model": MODEL, "payload": text}, auth(KEYS["user"])
    body = chat_body(MODEL, text)
    return body, {**auth(KEYS["user"]), "Idempotency-Key": key}


def billed(router: RouterProcess, path: str, key: str, request_ids: list[str]) -> int:
    """Usage records for an idempotent request (by request_id on /v1/inference, else by X-Request-ID)."""
    if path == INFERENCE:
        return len(records_for(router, key))
    wanted = set(request_ids)
    return sum(1 for record in usage_records(router) if request_ref(record) in wanted)


@pytest.mark.parametrize("path", [CHAT, INFERENCE])
async def test_twenty_concurrent_retries_reach_the_backend_once(store_router, clients, mock, path):
    mock.configure(latency_ms=200)
    key = str(uuid.uuid4())
    body, headers = request_for(path, key, f"only once please {key}")
    request_ids = [f"e2e-concurrent-{i}-{key}" for i in range(CONCURRENT)]

    async with clients.async_http(store_router) as client:
        answers = await asyncio.gather(
            *(client.post(path, json=body, headers={**headers, "X-Request-ID": rid}) for rid in request_ids)
        )
        later = await client.post(path, json=body, headers=headers)

    originals = [a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a.headers]
    assert len(originals) == 1, [a.status_code for a in answers]
    for answer in answers:
        if answer is originals[0]:
            continue
        if answer.status_code == 409:
            assert error_code(answer) == "REQUEST_IN_PROGRESS"
        else:
            assert answer.status_code == 200, answer.text
            assert answer.headers["Idempotent-Replayed"] == "true"
            assert answer.content == originals[0].content
    assert any(a.status_code == 409 for a in answers), "no retry overlapped the first attempt"
    assert later.status_code == 200
    assert later.headers["Idempotent-Replayed"] == "true"
    assert later.content == originals[0].content
    assert mock.inference_requests == 1
    assert wait_until(lambda: billed(store_router, path, key, request_ids)) == 1


async def test_a_replay_answers_faster_than_the_backend(store_router, clients, mock):
    """A stored reply is served from the store: the 400 ms backend latency is not paid again."""
    mock.configure(latency_ms=400)
    body, headers = request_for(INFERENCE, str(uuid.uuid4()), "quick replay")

    async with clients.async_http(store_router) as client:
        first = await client.post(INFERENCE, json=body, headers=headers)
        replay = await client.post(INFERENCE, json=body, headers=headers)

    assert first.status_code == 200, first.text
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (200, "true"), replay.text
    assert mock.inference_requests == 1  # the backend was not called again
    # Its latency was not paid again: the replay is quicker than the backend alone (measured against
    # the first answer, not a wall-clock constant, so a busy machine slows both alike).
    assert replay.elapsed < first.elapsed - timedelta(milliseconds=200)


@pytest.mark.parametrize("path", [CHAT, INFERENCE])
def test_a_key_used_on_one_router_replays_on_another_sharing_redis(
    redis_router, redis_router_b, clients, mock, path
):
    key = str(uuid.uuid4())
    body, headers = request_for(path, key, f"replicated {key}")

    first = clients.http(redis_router).post(path, json=body, headers=headers)
    on_b = clients.http(redis_router_b).post(path, json=body, headers=headers)

    assert first.status_code == 200, first.text
    assert on_b.status_code == 200, on_b.text
    assert on_b.headers["Idempotent-Replayed"] == "true"
    assert on_b.content == first.content
    assert mock.inference_requests == 1
    if path == INFERENCE:
        assert len(records_for(redis_router, key)) == 1
        assert records_for(redis_router_b, key) == []


def test_a_request_in_flight_on_one_router_is_in_progress_on_the_other(
    redis_router, redis_router_b, clients, mock
):
    mock.configure(latency_ms=600)
    key = str(uuid.uuid4())
    body, headers = request_for(INFERENCE, key, "slow on router a")
    first: list[httpx.Response] = []
    client_a, client_b = clients.http(redis_router), clients.http(redis_router_b)
    worker = threading.Thread(
        target=lambda: first.append(client_a.post(INFERENCE, json=body, headers=headers))
    )
    worker.start()
    assert wait_until(lambda: mock.inference_requests == 1, timeout=2.0)

    on_b = client_b.post(INFERENCE, json=body, headers=headers)
    worker.join(5)

    assert (on_b.status_code, error_code(on_b)) == (409, "REQUEST_IN_PROGRESS")
    assert first and first[0].status_code == 200
    assert mock.inference_requests == 1


def test_a_signature_used_on_one_router_is_a_replay_on_another_sharing_redis(
    redis_router, redis_router_b, clients, mock
):
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"sign {uuid.uuid4()}"}]}
    raw = dumps(body)
    headers = {
        **auth(KEYS["signer"]),
        **signed_headers(SIGNING_SECRET, CHAT, raw),
        "Content-Type": "application/json",
    }

    first = clients.http(redis_router).post(CHAT, content=raw, headers=headers)
    on_b = clients.http(redis_router_b).post(CHAT, content=raw, headers=headers)

    assert first.status_code == 200, first.text
    assert (on_b.status_code, error_code(on_b)) == (401, "SIGNATURE_REPLAYED")
    assert mock.inference_requests <= 1


def test_the_embedded_store_still_replays_after_a_router_restart(router, clients, mock):
    """The default store is on disk: a restart must not turn a client's retry into a second bill."""
    key = str(uuid.uuid4())
    body, headers = request_for(INFERENCE, key, "survive a restart")
    first = clients.http(router).post(INFERENCE, json=body, headers=headers)
    assert first.status_code == 200

    router.restart()
    retry = clients.http(router).post(INFERENCE, json=body, headers=headers)

    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert mock.inference_requests == 1
    assert len(records_for(router, key)) == 1
