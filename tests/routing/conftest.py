"""Fixtures for the outbound client: a fresh BackendClient per test, configs for mock backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from router_impl.config.model import BackendConfig
from router_impl.routing.backend_client import BackendClient
from tests.harness import bodies
from tests.harness.backend import MockBackend

SECRETS = {"MOCK_BACKEND_TOKEN": "sk-backend-secret"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def backend_for(mock: MockBackend, backend_id: str = "mock-a", **changes: Any) -> BackendConfig:
    fields: dict[str, Any] = {
        "id": backend_id,
        "base_url": mock.openai_base_url,
        "models": ("mock-model",),
        "timeout_ms": 2_000,
        "connect_timeout_ms": 500,
        "api_key_env": "MOCK_BACKEND_TOKEN",
    }
    fields.update(changes)
    return BackendConfig(**fields)


def chat_body(text: str = "hello there world", **extra: Any) -> bytes:
    return orjson.dumps(bodies.chat_body("mock-model", text, **extra))


@pytest.fixture
async def client() -> AsyncIterator[BackendClient]:
    backend_client = BackendClient(secrets=SECRETS)
    yield backend_client
    await backend_client.close()
