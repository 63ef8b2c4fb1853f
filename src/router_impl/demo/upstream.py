"""The built-in demo backend for `router serve --demo`: an OpenAI-compatible aiohttp server.

It runs inside the router's event loop and is also the upstream in benchmarks, so it does the
least work it can: orjson, pre-built bodies for the fixed routes, no logging per request.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from router_impl.demo.answers import (
    DEMO_MODEL,
    AnswerKind,
    BadRequest,
    answer,
    error_body,
    stream_events,
    whole_body,
)
from router_impl.demo.embeddings import embeddings_body

_JSON = "application/json"
_MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "api-router"}],
    }
)
_HEALTHY = orjson.dumps({"status": "ok"})
_ID_PREFIX: dict[AnswerKind, str] = {"chat": "chatcmpl-demo-", "completion": "cmpl-demo-"}


class DemoModel:
    """The request handlers; response ids count up per instance, ``clock`` gives ``created``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        # Long-context prompts: the router's OpenAI routes accept up to 10 MiB by default.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._inference("chat"))
        app.router.add_post("/v1/completions", self._inference("completion"))
        app.router.add_post("/v1/embeddings", _embeddings)
        app.router.add_get("/v1/models", _fixed(_MODELS))
        app.router.add_get("/health", _fixed(_HEALTHY))
        return app

    def _inference(self, kind: AnswerKind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        prefix = _ID_PREFIX[kind]

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                reply = answer(kind, await request.read())
            except BadRequest as error:
                return web.Response(status=error.status, body=error_body(error), content_type=_JSON)
            response_id = f"{prefix}{next(self._ids)}"
            created = int(self._clock())
            if not reply.stream:
                return web.Response(body=whole_body(kind, reply, response_id, created), content_type=_JSON)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            for event in stream_events(kind, reply, response_id, created):
                await response.write(event)
            await response.write_eof()
            return response

        return handle


async def _embeddings(request: web.Request) -> web.Response:
    try:
        body = embeddings_body(await request.read())
    except BadRequest as error:
        return web.Response(status=error.status, body=error_body(error), content_type=_JSON)
    return web.Response(body=body, content_type=_JSON)


def _fixed(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=_JSON)

    return handle


class DemoUpstream:
    """A running demo backend. ``base_url`` is its root; OpenAI clients use ``openai_base_url``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner: web.AppRunner | None = runner
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    async def stop(self) -> None:
        """Stop listening and close open connections; stopping twice is harmless."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def start_demo_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    clock: Callable[[], float] = time.time,
) -> DemoUpstream:
    """Serve the demo model on ``host:port`` (0 picks a free port), or on an already bound ``sock``,
    in the running event loop."""
    runner = web.AppRunner(DemoModel(clock).app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.SockSite(runner, sock, backlog=1024)
            if sock is not None
            else web.TCPSite(runner, host, port, backlog=1024)
        )
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
    except BaseException:
        await runner.cleanup()
        raise
    return DemoUpstream(runner, str(bound_host), int(bound_port))
