"""Smoke tests: each real server and the mock backend start, serve, stop and restart."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Consumer, Producer
from etcd3aio import Etcd3Client, prefix_range_end

from tests.harness.backend import MockBackend
from tests.harness.kafka import consumer_config, create_topic, producer_config
from tests.harness.probes import accepts_connections, etcd_healthy
from tests.harness.services import EtcdServer, KafkaBroker, RedisServer

pytestmark = pytest.mark.services


async def test_redis_serves_set_and_get(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("smoke:key", "value")
        assert await client.get("smoke:key") == b"value"
    finally:
        await client.aclose()


async def test_redis_refuses_connections_when_stopped_and_restarts_on_the_same_port(tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path) as server:
        port = server.port
        server.stop()
        client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1)
        try:
            with pytest.raises(aioredis.ConnectionError):
                await client.ping()
            server.start()
            assert server.port == port
            await client.set("after-restart", "1")
            assert await client.get("after-restart") == b"1"
        finally:
            await client.aclose()


async def test_etcd_put_get_prefix_and_watch(etcd_server: EtcdServer) -> None:
    prefix = f"/smoke/{uuid.uuid4().hex}/"
    async with Etcd3Client([etcd_server.endpoints]) as client:
        assert client.kv is not None and client.watch is not None
        watch_service = client.watch
        first = await client.kv.put(prefix + "a", "1")
        await client.kv.put(prefix + "b", "2")
        listed = await client.kv.get(prefix, prefix_range_end(prefix))
        assert sorted((kv.key, kv.value) for kv in listed.kvs) == [
            (prefix.encode() + b"a", b"1"),
            (prefix.encode() + b"b", b"2"),
        ]

        async def next_event_key() -> bytes:
            responses = watch_service.watch(
                prefix, prefix_range_end(prefix), start_revision=first.header.revision + 1
            )
            try:
                async for response in responses:
                    for event in response.events:
                        return bytes(event.kv.key)
            finally:
                await responses.aclose()  # type: ignore[attr-defined]  # an async generator in fact
            raise AssertionError("watch ended without an event")

        # Watching from a past revision replays the put of "b" even if it raced the watch set-up.
        assert await asyncio.wait_for(next_event_key(), timeout=5) == prefix.encode() + b"b"


async def test_etcd_fails_health_when_stopped_and_keeps_data_across_restart(tmp_path: Path) -> None:
    with EtcdServer(workdir=tmp_path) as server:
        async with Etcd3Client([server.endpoints]) as client:
            assert client.kv is not None
            await client.kv.put("/smoke/durable", "yes")
        server.stop()
        assert not etcd_healthy(server.client_port)
        server.start()
        async with Etcd3Client([server.endpoints]) as client:
            assert client.kv is not None
            stored = await client.kv.get("/smoke/durable")
            assert [kv.value for kv in stored.kvs] == [b"yes"]


def test_kafka_idempotent_producer_and_consumer_group_round_trip(kafka_broker: KafkaBroker) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker.bootstrap, topic)

    delivered: list[bytes] = []
    errors: list[object] = []

    def on_delivery(error: object, message: object) -> None:
        if error is not None:
            errors.append(error)
        else:
            delivered.append(message.key())  # type: ignore[attr-defined]

    producer = Producer(producer_config(kafka_broker.bootstrap))
    for index in range(10):
        producer.produce(topic, key=f"k{index}", value=json.dumps({"n": index}), on_delivery=on_delivery)
    assert producer.flush(10) == 0
    assert errors == []
    assert sorted(delivered) == sorted(f"k{i}".encode() for i in range(10))

    consumer = Consumer(consumer_config(kafka_broker.bootstrap, group_id=f"group-{topic}"))
    consumer.subscribe([topic])
    received: dict[bytes, object] = {}
    deadline = time.monotonic() + 20
    try:
        while len(received) < 10 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                key, value = message.key(), message.value()
                assert key is not None and value is not None
                received[key] = json.loads(value)
    finally:
        consumer.close()
    assert received == {f"k{i}".encode(): {"n": i} for i in range(10)}


def test_kafka_refuses_connections_when_stopped_and_restarts_on_the_same_port(tmp_path: Path) -> None:
    with KafkaBroker(workdir=tmp_path) as broker:
        port = broker.port
        broker.stop()
        assert not accepts_connections(port)
        broker.start()
        assert broker.port == port
        create_topic(broker.bootstrap, "after-restart")


def test_mock_backend_echoes_the_last_user_message_with_usage(mock_backend: MockBackend) -> None:
    body = {
        "model": "mock-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
    }
    response = httpx.post(
        f"{mock_backend.openai_base_url}/chat/completions", json=body, headers={"X-Test": "1"}
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "hello there world"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert mock_backend.inference_requests == 1
    assert mock_backend.last_request is not None
    assert mock_backend.last_request.body == body
    assert mock_backend.last_request.headers["X-Test"] == "1"


def test_mock_backend_streams_the_configured_number_of_chunks(mock_backend: MockBackend) -> None:
    mock_backend.configure(stream_chunks=5)
    text = "one two three four five six seven"
    body = {
        "model": "mock-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": text}],
    }
    with httpx.stream("POST", f"{mock_backend.openai_base_url}/chat/completions", json=body) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    content_chunks = [
        c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content") is not None
    ]
    assert len(content_chunks) == 5
    assert "".join(c["choices"][0]["delta"]["content"] for c in content_chunks) == text
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}


def test_mock_backend_injects_errors_and_counts_requests(mock_backend: MockBackend) -> None:
    mock_backend.configure(error_rate=1.0)
    response = httpx.post(f"{mock_backend.openai_base_url}/completions", json={"prompt": "hi"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"

    mock_backend.reset_controls()
    httpx.get(f"{mock_backend.base_url}/health")
    assert mock_backend.total_requests == 2
    assert mock_backend.requests.count("/v1/completions") == 1
    mock_backend.reset_counters()
    assert mock_backend.total_requests == 0


def test_mock_backend_faults_break_the_connection_the_way_they_say() -> None:
    with MockBackend() as backend:
        url = f"{backend.openai_base_url}/chat/completions"
        body = {"messages": [{"role": "user", "content": "a b c d"}], "stream": True}

        backend.configure(reset=True)
        with pytest.raises(httpx.TransportError):
            httpx.post(url, json=body)

        backend.configure(reset=False, hang=True)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=0.3)

        backend.configure(hang=False, garbage=True)
        with pytest.raises(json.JSONDecodeError):
            httpx.post(url, json=body).json()

        backend.configure(garbage=False, stream_then_die=2)
        received: list[str] = []
        with pytest.raises(httpx.TransportError), httpx.stream("POST", url, json=body) as response:
            received.extend(line for line in response.iter_lines() if line.startswith("data: "))
        assert len(received) == 2
        assert backend.inference_requests == 4
