"""Thin pass-through proxy baseline: aiohttp server + pooled aiohttp client, one process, uvloop.

The ceiling for a Python gateway process: one header check (Authorization: Bearer <key>), the raw
body forwarded to the upstream, the response relayed (streamed through when it is an event stream).
Usage: thin_proxy.py --port 18100 --upstream http://127.0.0.1:18000 --key sk-bench-master
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
FORWARD_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer dummy"}


def build_app(upstream: str, key: str) -> web.Application:
    expected = "Bearer " + key

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=60),
            skip_auto_headers=("User-Agent",),
        )
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.read()
        session = request.app[SESSION]
        async with session.post(upstream + request.path, data=body, headers=FORWARD_HEADERS) as upstream_r:
            if upstream_r.content_type != "text/event-stream":
                data = await upstream_r.read()
                return web.Response(body=data, status=upstream_r.status, content_type="application/json")
            relay = web.StreamResponse(
                status=upstream_r.status, headers={"Content-Type": "text/event-stream"}
            )
            await relay.prepare(request)
            async for chunk in upstream_r.content.iter_any():
                await relay.write(chunk)
            await relay.write_eof()
            return relay

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_post("/chat/completions", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--upstream", default="http://127.0.0.1:18000")
    parser.add_argument("--key", default="sk-bench-master")
    args = parser.parse_args()
    web.run_app(
        build_app(args.upstream, args.key),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
