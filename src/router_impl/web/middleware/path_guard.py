"""Answers a request target with a trailing slash (``/v1/admin/keys/``) with 404 in the error shape.

No operation of the contract ends in ``/``; Starlette's router would answer such a target with a
307 whose ``Location`` is built from the ``Host`` header -- an open redirect. The guard sits in front
of the fast lane and Connexion, so both answer the same, and no redirect is ever built from a header.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from router_impl.errors import ApiError
from router_impl.web.responses import send_error


class PathGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            await send_error(scope, send, ApiError("NOT_FOUND", "No operation matches this path."))
            return
        await self.app(scope, receive, send)
