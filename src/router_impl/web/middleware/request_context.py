"""Outermost middleware: request id and trace ids for every request, the ingress span (when tracing),
X-Request-ID out, one access log line, and the request's RED metrics (by route template).

``request_id`` and ``trace_id`` are bound with structlog's context variables for the request's
duration, so every event logged below carries them without being passed by hand; who served the
request (backend, routing decision) is read from the request state the handler filled in."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_impl.errors import ApiError
from router_impl.telemetry.metrics import Metrics, RouteNames
from router_impl.telemetry.tracing import Tracing
from router_impl.web.current import CURRENT_SCOPE
from router_impl.web.request_state import STATE_KEY, RequestState, new_state
from router_impl.web.responses import send_error


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        openai_paths: frozenset[str],
        access_log: bool = True,
        random_hex: Callable[[int], str] = secrets.token_hex,
        metrics: Metrics | None = None,
        routes: RouteNames | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.random_hex = random_hex
        self.openai_paths = openai_paths
        self.access_log = access_log
        self.log = structlog.get_logger("router.access")
        self.metrics = metrics
        self.routes = routes or RouteNames(())
        self.tracing = tracing or Tracing()

    def _openai(self, path: str) -> bool:
        """OpenAI's error shape on its operations (``openai_paths`` holds their templates) and on
        every path under /v1 that no operation serves: an SDK's NotFoundError then says why."""
        if path in self.openai_paths:
            return True
        if not path.startswith("/v1/"):
            return False
        template = self.routes(path)
        return template == "unmatched" or template in self.openai_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = new_state(scope["headers"], openai=self._openai(scope["path"]), random_hex=self.random_hex)
        ingress = (
            self.tracing.ingress(
                state.trace_id,
                state.parent_span_id,
                state.parent_flags,
                {"http.request.method": scope["method"], "router.request_id": state.request_id},
            )
            if self.tracing.enabled
            else None
        )
        if ingress is not None:  # the exported trace names this request: usage, audit and logs agree
            state.trace_id, state.span_id = ingress.trace_id, ingress.span_id
        scope.setdefault("state", {})[STATE_KEY] = state
        CURRENT_SCOPE.set(scope)
        bound = structlog.contextvars.bind_contextvars(request_id=state.request_id, trace_id=state.trace_id)
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
            self.log.exception("unhandled_error")
            if not response_started:
                await send_error(scope, send_with_id, ApiError("INTERNAL_ERROR"))
        finally:
            if ingress is not None:
                ingress.end(
                    status,
                    {
                        "http.route": self.routes(scope["path"]),
                        "router.organization_id": state.organization_id,
                        "router.api_key_id": state.api_key_id,
                        "router.backend.id": state.backend_id,
                        "router.routing.decision": state.decision,
                        "router.error_code": state.error_code,
                    },
                )
            if self.metrics is not None:
                self.metrics.observe_request(
                    self.routes(scope["path"]),
                    scope["method"],
                    status,
                    time.perf_counter() - started,
                    state.error_code,
                )
            if self.access_log:
                self._log(scope, state, status, started)
            structlog.contextvars.reset_contextvars(**bound)

    def _log(self, scope: Scope, state: RequestState, status: int, started: float) -> None:
        """Ids, codes and timings only: never a credential, a signature or a body."""
        fields: dict[str, Any] = {
            "method": scope["method"],
            "route": scope["path"],
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "request_id": state.request_id,
            "trace_id": state.trace_id,
            "span_id": state.span_id,
            "organization_id": state.organization_id,
            "api_key_id": state.api_key_id,
            "backend": state.backend_id,
            "decision": state.decision,
            "error_code": state.error_code,
        }
        self.log.info("request", **fields)
