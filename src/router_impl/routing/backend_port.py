"""The backend port: how the request path calls a model backend, whatever carries the call.

Like httpx's transports: the pipeline and the dispatcher speak only to this interface; the aiohttp
client (``backend_client.BackendClient``) is its adapter, and ``tests/harness/fake_backends.py`` an
in-memory one. The port speaks in operation kinds; the adapter knows the backends' URL paths.
Failures before an answer begins are ``BackendCallError``; a stream that breaks after it began
raises ``StreamBroken`` from its iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from router_impl.config.model import BackendConfig

# The OpenAI operation a request is: it names the backend's path and how usage is estimated.
Kind = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """One call to one backend: the encoded body (its ``model`` already the backend's name)."""

    kind: Kind
    body: bytes
    traceparent: str
    request_id: str
    deadline: float | None  # absolute, on the adapter's monotonic clock


@dataclass(frozen=True, slots=True)
class BackendReply:
    """A backend's 2xx answer. ``document`` is ``body`` already parsed (always a JSON object)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    elapsed_ms: float
    document: dict[str, Any]


class OpenedStream(Protocol):
    """A streamed answer that has begun: raw SSE blocks (bytes ending in b"\\n\\n") as they arrive.
    ``close`` gives the connection back when read to its end, closes it otherwise; safe twice."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class BackendPort(Protocol):
    def in_flight(self, backend_id: str) -> int:
        """Calls to ``backend_id`` now under way (the dispatcher skips saturated backends)."""
        ...

    async def send(self, backend: BackendConfig, request: BackendRequest) -> BackendReply:
        """The whole answer of a non-streamed call, or ``BackendCallError``."""
        ...

    async def open_stream(self, backend: BackendConfig, request: BackendRequest) -> OpenedStream:
        """A streamed call whose answer began as an event stream, or ``BackendCallError``."""
        ...
