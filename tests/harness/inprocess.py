"""A router in this process: built from ``Settings``, started as the ASGI lifespan would start it,
and called through an httpx client on its ASGI app (no socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp

from router_impl.app import build_app, build_components
from router_impl.components import Components
from router_impl.settings import Settings


@dataclass
class InProcess:
    app: ASGIApp
    client: httpx.AsyncClient
    components: Components


def asgi_client(app: ASGIApp, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://router", headers=headers
    )


@asynccontextmanager
async def in_process(
    settings: Settings, *, headers: Mapping[str, str] | None = None, **build: Any
) -> AsyncIterator[InProcess]:
    """The router of ``settings`` (``build``: more arguments of ``build_components``), started, with
    a client sending ``headers``; stopped on leaving."""
    components = build_components(settings, **build)
    app = build_app(components)
    await components.lifecycle.start()
    try:
        async with asgi_client(app, headers) as client:
            yield InProcess(app, client, components)
    finally:
        await components.lifecycle.stop()
