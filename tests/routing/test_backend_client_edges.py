"""Backend behaviours the mock cannot show, from a small aiohttp server: Retry-After, leaky error
messages, redirects, compression, oversized and non-object answers, odd SSE framing."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from router_impl.config.model import BackendConfig
from router_impl.routing.backend_client import BackendCallError, BackendClient, StreamBroken
from tests.routing.conftest import TRACEPARENT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OneRouteServer:
    """Answers POST /v1/chat/completions with whatever handler the test sets."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/elsewhere", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[OneRouteServer]:
    running = OneRouteServer()
    await running.start()
    yield running
    assert running.runner is not None
    await running.runner.cleanup()


async def post(server: OneRouteServer, client: BackendClient | None = None, **config):
    backend = BackendConfig(id="edge", base_url=server.base_url, **config)
    own = client is None
    client = client or BackendClient(secrets={})
    try:
        return await client.post_json(
            backend, "/chat/completions", b"{}", traceparent=TRACEPARENT, request_id="r", deadline=None
        )
    finally:
        if own:
            await client.close()


async def failure(server: OneRouteServer, **config) -> BackendCallError:
    with pytest.raises(BackendCallError) as caught:
        await post(server, **config)
    return caught.value


def answering(status: int, body: bytes = b"{}", **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers=headers, content_type="application/json")

    return handle


async def test_a_429_passes_its_numeric_retry_after_on(server):
    server.handler = answering(429, **{"Retry-After": "7"})
    error = await failure(server)
    assert (error.code, error.status_code, error.headers) == (
        "BACKEND_UNAVAILABLE",
        503,
        {"Retry-After": "7"},
    )


async def test_a_400_whose_message_names_the_backend_is_reduced_to_the_generic_message(server):
    leaky = {"error": {"message": f"bad request to {server.base_url}/chat/completions", "type": "x"}}
    server.handler = answering(400, orjson.dumps(leaky))
    error = await failure(server)
    assert error.message == "The backend rejected the request."


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"", b"null", b"<html>"])
async def test_a_2xx_that_is_not_a_json_object_is_a_backend_error(server, body):
    server.handler = answering(200, body)
    error = await failure(server)
    assert (error.code, error.reason, error.maybe_processed) == ("BACKEND_ERROR", "bad_response", True)


async def test_redirects_are_not_followed(server):
    server.handler = answering(307, Location=server.base_url.removesuffix("/v1") + "/elsewhere")
    error = await failure(server)
    assert (error.code, error.upstream_status) == ("BACKEND_ERROR", 307)


async def test_a_gzip_answer_from_a_backend_that_ignores_identity_is_decoded(server):
    async def handle(request: web.Request) -> web.StreamResponse:
        assert request.headers["Accept-Encoding"] == "identity"
        body = gzip.compress(b'{"ok": true}')
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    server.handler = handle
    assert (await post(server)).document == {"ok": True}


async def test_an_oversized_answer_is_refused(server):
    server.handler = answering(200, b'{"pad": "' + b"x" * 4096 + b'"}')
    client = BackendClient(secrets={}, max_response_bytes=1024)
    try:
        with pytest.raises(BackendCallError) as caught:
            await post(server, client)
    finally:
        await client.close()
    assert (caught.value.code, caught.value.reason) == ("BACKEND_ERROR", "bad_response")


async def test_an_oversized_chunked_answer_is_refused(server):
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(8):
            await response.write(b" " * 512)
        await response.write(b"{}")
        await response.write_eof()
        return response

    server.handler = handle
    client = BackendClient(secrets={}, max_response_bytes=1024)
    try:
        with pytest.raises(BackendCallError):
            await post(server, client)
        client_ok = BackendClient(secrets={})
        try:
            assert (await post(server, client_ok)).document == {}
        finally:
            await client_ok.close()
    finally:
        await client.close()


def sse(*pieces: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
        return response

    return handle


async def stream(server: OneRouteServer) -> list[bytes]:
    client = BackendClient(secrets={})
    backend = BackendConfig(id="edge", base_url=server.base_url)
    try:
        async with client.stream(
            backend, "/chat/completions", b"{}", traceparent=TRACEPARENT, request_id="r", deadline=None
        ) as events:
            return [block async for block in events]
    finally:
        await client.close()


async def test_events_split_across_writes_with_crlf_and_comments_come_out_whole(server):
    server.handler = sse(b': ping\r\n\r\ndata: {"a"', b":1}\r\n", b"\r\ndata: [DONE]\r\n\r\n")
    assert await stream(server) == [b": ping\n\n", b'data: {"a":1}\n\n', b"data: [DONE]\n\n"]


async def test_a_stream_ending_mid_event_is_broken(server):
    server.handler = sse(b"data: 1\n\n", b'data: {"trunc')
    with pytest.raises(StreamBroken) as broken:
        await stream(server)
    assert broken.value.events_relayed == 1


async def test_an_empty_event_stream_is_a_backend_error(server):
    server.handler = sse()
    with pytest.raises(BackendCallError) as caught:
        await stream(server)
    assert caught.value.code == "BACKEND_ERROR"


async def test_a_connection_cut_after_the_status_line_is_a_disconnect_not_a_reset(server):
    """Once a byte of the answer arrived the backend surely ran the request: never sent elsewhere."""

    async def cut(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"Content-Length": "100"})
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"id": ')
        assert request.transport is not None
        request.transport.abort()
        return response

    server.handler = cut
    error = await failure(server)
    assert (error.code, error.reason, error.maybe_processed) == ("BACKEND_UNAVAILABLE", "disconnect", True)
