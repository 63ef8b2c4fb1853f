"""The outermost middleware binds the request's ids for every log event below it, and logs who
served the request from the request state (the handler's report), not from response headers."""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from starlette.types import Receive, Scope, Send

from router_impl.web.middleware.request_context import RequestContextMiddleware
from router_impl.web.request_state import state_of


async def test_request_ids_are_bound_for_the_request_and_gone_after_it() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(structlog.contextvars.get_contextvars())
        state = state_of(scope)
        assert state is not None
        state.backend_id, state.decision = "b1", "FAILOVER"  # as a handler reports it
        headers = [(b"x-routing-backend", b"not-read")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = RequestContextMiddleware(app, openai_paths=frozenset(), access_log=True)
    with structlog.testing.capture_logs() as logs:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/x", headers={"X-Request-ID": "req-7"})
    assert seen["request_id"] == "req-7" == response.headers["x-request-id"]
    assert len(seen["trace_id"]) == 32
    assert structlog.contextvars.get_contextvars() == {}
    [access] = [entry for entry in logs if entry["event"] == "request"]
    assert (access["backend"], access["decision"]) == ("b1", "FAILOVER")
