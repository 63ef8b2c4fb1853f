"""The demo upstream over real HTTP: deterministic echoes, usage arithmetic, streaming shape, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from router_impl.config.model import BackendConfig
from router_impl.demo.upstream import DemoUpstream, start_demo_upstream
from router_impl.routing.backend_client import BackendCallError, BackendClient
from router_impl.routing.sse import (
    StreamUsageTracker,
    TokenUsage,
    chunk_json,
    is_done,
    parse_event,
    split_events,
)


@pytest.fixture
async def demo() -> AsyncIterator[DemoUpstream]:
    upstream = await start_demo_upstream(clock=lambda: 1_700_000_000.5)
    yield upstream
    await upstream.stop()


@pytest.fixture
async def http(demo: DemoUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=demo.openai_base_url) as client:
        yield client


def chat(*messages: tuple[str, str], **extra) -> dict:
    return {"model": "demo", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


async def test_chat_echoes_the_last_user_message_with_real_usage(http):
    body = chat(
        ("system", "be brief please"),
        ("user", "first question"),
        ("assistant", "ok"),
        ("user", "say   hello\nto the world"),
    )
    response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer == {
        "id": "chatcmpl-demo-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "demo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "say hello to the world"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # 3 + 2 + 1 + 5 words in all messages; 5 in the reply
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


async def test_the_same_request_gives_the_same_answer(http):
    body = chat(("user", "deterministic please"))
    first, second = [(await http.post("/chat/completions", json=body)).json() for _ in range(2)]
    assert first["id"] != second["id"]
    first.pop("id"), second.pop("id")
    assert first == second


async def test_content_parts_count_their_text(http):
    body = chat(("user", [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {}}]))
    answer = (await http.post("/chat/completions", json=body)).json()
    assert answer["choices"][0]["message"]["content"] == "two words"
    assert answer["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_the_reply(http, field):
    answer = (await http.post("/chat/completions", json=chat(("user", "a b c d e"), **{field: 2}))).json()
    assert answer["choices"][0]["message"]["content"] == "a b"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_completions_echo_the_prompt(http):
    answer = (await http.post("/completions", json={"model": "demo", "prompt": "once upon a time"})).json()
    assert answer["object"] == "text_completion"
    assert answer["id"].startswith("cmpl-demo-")
    assert answer["choices"][0]["text"] == "once upon a time"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    listed = await http.post("/completions", json={"model": "demo", "prompt": ["a b", "c"], "max_tokens": 2})
    assert listed.json()["choices"][0]["text"] == "a b"


async def test_token_id_prompts_count_one_word_per_token(http):
    answer = (await http.post("/completions", json={"model": "demo", "prompt": [[1, 2], [3]]})).json()
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_the_upstream_can_serve_on_a_socket_bound_beforehand():
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    upstream = await start_demo_upstream(sock=sock)
    try:
        assert upstream.base_url == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{upstream.base_url}/health")).status_code == 200
    finally:
        await upstream.stop()


async def test_a_chat_stream_has_one_chunk_per_word_then_finish_usage_and_done(http):
    body = chat(("user", "stream these four words"), stream=True, stream_options={"include_usage": True})
    response = await http.post("/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    blocks = split_events([response.content])
    chunks = [chunk_json(parse_event(block)) for block in blocks[:-1]]
    assert is_done(parse_event(blocks[-1]))
    assert len(chunks) == 4 + 1 + 1
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:4]] == [
        {"role": "assistant", "content": "stream"},
        {"content": " these"},
        {"content": " four"},
        {"content": " words"},
    ]
    assert chunks[4]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert all(c["usage"] is None for c in chunks[:5])
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_a_stream_concatenates_to_the_whole_answer(http):
    text = "  spaced\tout   words here "
    whole = (await http.post("/chat/completions", json=chat(("user", text), max_tokens=3))).json()
    streamed = await http.post("/chat/completions", json=chat(("user", text), max_tokens=3, stream=True))
    tracker = StreamUsageTracker()
    for block in split_events([streamed.content]):
        tracker.feed(block)
    assert tracker.text == whole["choices"][0]["message"]["content"] == "spaced out words"
    assert tracker.finish_reason == "length"
    assert tracker.usage() is None  # not asked for
    assert tracker.done


async def test_a_completions_stream_and_an_empty_reply(http):
    response = await http.post("/completions", json={"model": "demo", "prompt": "x y", "stream": True})
    chunks = [chunk_json(parse_event(b)) for b in split_events([response.content])[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["x", " y", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    empty = await http.post("/chat/completions", json=chat(("system", "no user here"), stream=True))
    chunks = [chunk_json(parse_event(b)) for b in split_events([empty.content])[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", b"{not json", None),
        ("/chat/completions", b"[1]", None),
        ("/chat/completions", orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
        ("/chat/completions", orjson.dumps({"model": "demo"}), "messages"),
        ("/chat/completions", orjson.dumps({"model": "demo", "messages": []}), "messages"),
        ("/chat/completions", orjson.dumps({"model": "demo", "messages": ["hi"]}), "messages[0]"),
        ("/chat/completions", orjson.dumps(chat(("user", "x"), max_tokens=0)), "max_tokens"),
        ("/chat/completions", orjson.dumps(chat(("user", "x"), max_tokens="5")), "max_tokens"),
        ("/chat/completions", orjson.dumps(chat(("user", "x"), stream="yes")), "stream"),
        ("/chat/completions", orjson.dumps(chat(("user", "x"), stream_options=[])), "stream_options"),
        ("/completions", orjson.dumps({"model": "demo", "prompt": [1, "two"]}), "prompt"),
        ("/completions", orjson.dumps({"model": "demo", "prompt": {"text": "x"}}), "prompt"),
        ("/completions", orjson.dumps({"model": "demo"}), "prompt"),
    ],
)
async def test_bad_bodies_get_openai_shaped_400s(http, path, body, param):
    response = await http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]


async def test_an_unknown_model_is_a_404(http):
    response = await http.post("/chat/completions", json={**chat(("user", "x")), "model": "gpt-9"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_models_and_health(demo, http):
    models = (await http.get("/models")).json()
    assert [m["id"] for m in models["data"]] == ["demo"]
    async with httpx.AsyncClient() as root:
        assert (await root.get(f"{demo.base_url}/health")).json() == {"status": "ok"}


async def test_the_backend_client_talks_to_the_demo(demo):
    backend = BackendConfig(id="demo-upstream", base_url=demo.openai_base_url, models=("demo",))
    client = BackendClient(secrets={})
    try:
        reply = await client.post_json(
            backend,
            "/chat/completions",
            orjson.dumps(chat(("user", "ping pong"))),
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            request_id="r",
            deadline=None,
        )
        assert reply.document["usage"]["total_tokens"] == 4
        body = orjson.dumps(chat(("user", "a b c"), stream=True, stream_options={"include_usage": True}))
        tracker = StreamUsageTracker()
        async with client.stream(
            backend,
            "/chat/completions",
            body,
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            request_id="r",
            deadline=None,
        ) as events:
            async for block in events:
                tracker.feed(block)
        assert tracker.usage() == TokenUsage(3, 3, 6)
        with pytest.raises(BackendCallError) as caught:
            await client.post_json(
                backend,
                "/chat/completions",
                b'{"model":"demo"}',
                traceparent="t",
                request_id="r",
                deadline=None,
            )
        assert caught.value.code == "INVALID_REQUEST"
        assert "messages" in caught.value.message
    finally:
        await client.close()


async def test_stop_frees_the_port(demo):
    await demo.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{demo.base_url}/health")
