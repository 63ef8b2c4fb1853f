"""Handlers receive the request as a frozen ``RequestContext`` argument: called directly they need no
context variable, and the resolver's binding (the one reader of it) passes Connexion the same context
the fast lane builds from its scope."""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from router_impl.app import build_components
from router_impl.errors import ApiError
from router_impl.handlers import status
from router_impl.settings import Settings
from router_impl.web.current import CURRENT_SCOPE, RequestContext, request_context
from router_impl.web.request_state import STATE_KEY, new_state
from router_impl.web.resolver import with_current_request


def _scope(client: str, request_id: str = "req-1") -> dict[str, Any]:
    headers = [(b"x-request-id", request_id.encode()), (b"idempotency-key", b"k-1")]
    state = new_state(headers, openai=False, random_hex=lambda n: "ab" * n)
    state.body, state.document = b'{"a":1}', {"a": 1}
    return {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "client": (client, 40000),
        "headers": headers,
        "state": {STATE_KEY: state},
    }


def test_the_context_is_the_scopes_request_frozen() -> None:
    request = request_context(_scope("10.0.0.7"))
    assert (request.method, request.path, request.client, request.request_id) == (
        "GET",
        "/metrics",
        "10.0.0.7",
        "req-1",
    )
    assert request.header(b"idempotency-key") == "k-1" and request.json_body() == {"a": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.path = "/elsewhere"  # type: ignore[misc]


async def test_a_handler_called_directly_reads_its_request_from_the_argument(tmp_path: Path) -> None:
    components = build_components(Settings(data_dir=tmp_path, access_log=False))
    # Time stands still: at 20 tokens/s a loaded machine's 40 calls taking over 50 ms refilled one
    # token, and the 41st call was served (a loaded make test run).
    components.probe_guard.clock = lambda: 1_800_000_000.0
    with pytest.raises(LookupError):
        CURRENT_SCOPE.get()  # nothing to fall back on: the handler has only its arguments
    busy, quiet = request_context(_scope("10.0.0.1")), request_context(_scope("10.0.0.2"))
    for _ in range(40):  # the probe guard's burst for one client
        assert (await status.get_metrics(components, busy)).status_code == 200
    with pytest.raises(ApiError) as refused:
        await status.get_metrics(components, busy)
    assert refused.value.code == "RATE_LIMIT_EXCEEDED"
    assert (await status.get_metrics(components, quiet)).status_code == 200  # another peer, its own bucket


async def test_connexion_gets_the_handler_with_the_context_the_fast_lane_would_build() -> None:
    seen: list[tuple[RequestContext, str, dict[str, Any]]] = []

    async def handler(
        components: object, request: RequestContext, model: str, token_info: dict[str, Any]
    ) -> str:
        seen.append((request, model, token_info))
        return "answered"

    bound = partial(handler, "components")
    for_connexion = with_current_request(bound)
    # Connexion binds by the signature it inspects: the parameters it supplies, nothing of ours.
    assert list(inspect.signature(for_connexion).parameters) == ["model", "token_info"]
    scope = _scope("10.0.0.3", "req-9")
    token = CURRENT_SCOPE.set(scope)
    try:
        assert await for_connexion(model="demo", token_info={"sub": "k"}) == "answered"
    finally:
        CURRENT_SCOPE.reset(token)
    assert await bound(request_context(scope), model="demo", token_info={"sub": "k"}) == "answered"
    assert seen[0] == seen[1] and seen[0][0].request_id == "req-9"


def test_a_handler_that_does_not_take_the_request_is_refused_at_start_up() -> None:
    async def handler(components: object, model: str) -> None:
        return None

    with pytest.raises(TypeError):
        with_current_request(partial(handler, "components"))
