"""The router in process (demo mode, its own demo upstream), with or without the fast lane, and a
raw ASGI caller for request targets that HTTP clients would normalise before sending.

``raw_request`` builds the ASGI scope the way uvicorn's httptools protocol does: the target is
split by ``httptools.parse_url`` (so an absolute-form target keeps only its path), the path is
percent-decoded, ``raw_path`` keeps the bytes as sent, and dot segments are left alone.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
from starlette.types import ASGIApp, Message

from router_impl.app import build_app, build_components
from router_impl.demo.upstream import start_demo_upstream
from router_impl.settings import Settings
from tests.harness.inprocess import InProcess, asgi_client

API_KEY = "rk-demo-key"  # demo keys: inference + audit, and admin
ADMIN_KEY = "rk-demo-admin-key"
SECRET_KEY = "security-suite-secret-key-0123456789abcdef"


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def demo_routers(
    root: Path, *lanes: bool, config: str | None = None, **settings: Any
) -> AsyncIterator[list[InProcess]]:
    """One demo router per entry of ``lanes`` (fast lane on or off), each with its own data dir and
    demo upstream, and its own copy of ``config`` (runtime-config YAML) as its config file: admin
    writes go to that file, which routers must not share. All are built before any starts: building
    blocks the event loop for a while, and a started router's health probe would time out meanwhile
    and take its upstream out of service."""
    async with AsyncExitStack() as stack:
        built = []
        for index, fast_lane in enumerate(lanes):
            upstream = await start_demo_upstream()
            stack.push_async_callback(upstream.stop)
            if config is not None:
                settings["config_path"] = root / f"router-{index}.yaml"
                settings["config_path"].write_text(config, encoding="utf-8")
            components = build_components(
                Settings(
                    data_dir=root / f"router-{index}",
                    demo=True,
                    demo_upstream=upstream.base_url,
                    fast_lane=fast_lane,
                    access_log=False,
                    secret_key=SECRET_KEY,
                    **settings,
                )
            )
            built.append((components, build_app(components)))
        running = []
        for components, app in built:
            await components.lifecycle.start()  # what the ASGI lifespan does
            stack.push_async_callback(components.lifecycle.stop)
            client = await stack.enter_async_context(asgi_client(app))
            running.append(InProcess(app, client, components))
        yield running


@asynccontextmanager
async def demo_router(root: Path, *, fast_lane: bool, **settings: Any) -> AsyncIterator[InProcess]:
    async with demo_routers(root, fast_lane, **settings) as (running,):
        yield running


async def raw_request(
    app: ASGIApp,
    method: str,
    target: bytes,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> RawAnswer:
    """``headers`` as a mapping, or as pairs (a name may repeat); values are sent as latin-1 bytes."""
    parsed = httptools.parse_url(target)
    raw_path: bytes = parsed.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    header_list = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    if body:
        header_list.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "root_path": "",
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query_string": parsed.query or b"",
        "headers": header_list,
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return RawAnswer(start["status"], answer_headers, content)
