"""The HTTP/1.1 connection limits uvicorn's httptools protocol lacks (unauthenticated DoS, issue 16).

Enforced while the bytes arrive, before any request exists:

- a request head (request line and header lines) over ``max_head_bytes`` is cut off there: 431;
  httptools buffers an unfinished header line itself, so the bytes are counted as they are fed;
- more than ``max_header_fields`` header lines: 431;
- a head not complete within ``head_timeout_seconds`` of the connection being ready for it (opened,
  or its previous response sent): 400 when a head had begun, else closed silently;
- a new connection idle for uvicorn's keep-alive timeout before its first byte is closed, as one
  between requests already is;
- at ``max_connections`` per worker, a new connection closes the one that has waited longest for a
  request head (idle or trickling); only when every connection is busy with a request is the new one
  answered 503. Slow clients thus never lock out new ones, and busy requests are never cut.

Subclasses uvicorn's ``HttpToolsProtocol`` (pinned: tests/security/test_http_limits.py fails when
the hooks used here change). Errors are the contract's ErrorResponse, with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from router_impl.errors import ApiError, render


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 16 * 1024
    max_header_fields: int = 100
    head_timeout_seconds: float = 10.0
    max_connections: int = 4096


@dataclass
class WaitingConnections:
    """One worker's connections waiting for a request head, oldest first: the first to go at the cap.
    Each worker process unpickles its own (uvicorn hands its config to spawned workers)."""

    limits: ConnectionLimits
    _waiting: dict[LimitedHttpToolsProtocol, None] = field(default_factory=dict, repr=False)

    def add(self, connection: LimitedHttpToolsProtocol) -> None:
        self._waiting.pop(connection, None)
        self._waiting[connection] = None

    def discard(self, connection: LimitedHttpToolsProtocol) -> None:
        self._waiting.pop(connection, None)

    def oldest(self) -> LimitedHttpToolsProtocol | None:
        return next(iter(self._waiting), None)

    def __len__(self) -> int:
        return len(self._waiting)

    def __getstate__(self) -> dict[str, Any]:
        return {"limits": self.limits, "_waiting": {}}


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing; ``send_400_response`` then answers."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        waiting: WaitingConnections,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._waiting = waiting
        self._limits = waiting.limits
        self._head_open = True  # the bytes now received belong to a request head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: ApiError | None = None

    # -------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            oldest = self._waiting.oldest()
            if oldest is None:
                self._answer(ApiError("SERVICE_UNAVAILABLE", "Too many connections.", retry_after_seconds=1))
                return
            oldest.evict()
        self._await_head()
        # Idle before its first byte: closed like a connection idle between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def evict(self) -> None:
        """Make room for a new connection: this one only waits for a request head."""
        self._stop_waiting()
        self.transport.close()

    # -------------------------------------------------------------- the request head

    def data_received(self, data: bytes) -> None:
        if self._head_open:
            room = self._limits.max_head_bytes - self._head_bytes
            if len(data) > room:
                super().data_received(data[:room])  # the head may end within the room
                if self._head_open:
                    if not self.transport.is_closing():
                        limit = self._limits.max_head_bytes
                        self._answer(
                            ApiError("HEADERS_TOO_LARGE", f"The request head exceeds {limit} bytes.")
                        )
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        if not self.transport.is_closing():
            super().data_received(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self._limits.max_header_fields:
            limit = self._limits.max_header_fields
            self._refusal = ApiError("HEADERS_TOO_LARGE", f"The request has more than {limit} header fields.")
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._stop_waiting()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open, self._head_bytes = True, 0  # what follows is the next request's head

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; a limit this class enforces answers instead."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._answer(refusal)

    # -------------------------------------------------------------- waiting for a head

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(self._limits.head_timeout_seconds, self._head_timed_out)
        self._waiting.add(self)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._waiting.discard(self)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._waiting.discard(self)
        if self.transport.is_closing():
            return
        if self._head_bytes:
            seconds = f"{self._limits.head_timeout_seconds:g}"
            self._answer(ApiError("INVALID_REQUEST", f"The request head did not arrive within {seconds} s."))
        else:
            self.transport.close()

    def _answer(self, error: ApiError) -> None:
        """The contract's ErrorResponse, then the connection ends (no request exists yet)."""
        self._stop_waiting()
        body = render(error, trace_id=secrets.token_hex(16), request_id=None, openai=False)
        lines = [f"HTTP/1.1 {error.status_code} {_REASONS[error.status_code]}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in error.headers.items()]
        lines += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.transport.close()


_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
