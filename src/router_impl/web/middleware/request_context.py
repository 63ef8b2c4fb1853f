"""Outermost middleware: request id and trace ids for every request, X-Request-ID out, one access log line."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_impl.errors import ApiError
from router_impl.web.current import CURRENT_SCOPE
from router_impl.web.request_state import STATE_KEY, new_state
from router_impl.web.responses import send_error


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        openai_paths: frozenset[str],
        access_log: bool = True,
        random_hex: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self.app = app
        self.random_hex = random_hex
        self.openai_paths = openai_paths
        self.access_log = access_log
        self.log = structlog.get_logger("router.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = new_state(
            scope["headers"], openai=scope["path"] in self.openai_paths, random_hex=self.random_hex
        )
        scope.setdefault("state", {})[STATE_KEY] = state
        CURRENT_SCOPE.set(scope)
        request_id_header = (b"x-request-id", state.request_id.encode("ascii"))
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), request_id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Connexion renders its own errors; this only catches failures outside it.
            self.log.exception("unhandled_error", request_id=state.request_id, trace_id=state.trace_id)
            if not response_started:
                await send_error(scope, send_with_id, ApiError("INTERNAL_ERROR"))
        finally:
            if self.access_log:
                self._log(scope, state.request_id, state.trace_id, status, started)

    def _log(self, scope: Scope, request_id: str, trace_id: str, status: int, started: float) -> None:
        fields: dict[str, Any] = {
            "method": scope["method"],
            "route": scope["path"],
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "request_id": request_id,
            "trace_id": trace_id,
        }
        self.log.info("request", **fields)
