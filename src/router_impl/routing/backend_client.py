"""The backend port's aiohttp adapter: outbound HTTP to OpenAI-compatible backends, one pooled session each.

It knows the backends' URL paths (``BACKEND_PATHS``). Every failure leaves as a ``BackendCallError``
(an ``ApiError`` from the catalog) that says whether the backend may have processed the request,
so the router knows when failover is safe.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
import orjson

from router_impl.config.model import BackendConfig
from router_impl.routing.backend_errors import BackendCallError, StreamBroken, error_for_status
from router_impl.routing.backend_pool import CONNECTED, BackendPool, PoolSettings
from router_impl.routing.backend_port import BackendReply, BackendRequest, Kind
from router_impl.routing.backend_stream import BackendStream, OpenedBackendStream, StreamCall
from router_impl.routing.backend_transport import map_transport_error, read_limited

__all__ = ["BackendCallError", "BackendClient", "BackendReply", "BackendStream", "StreamBroken"]

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_MAX_ERROR_BODY_BYTES = 64 * 1024
# Under each backend's base URL (which ends in /v1 or the like).
BACKEND_PATHS: dict[Kind, str] = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embedding": "/embeddings",
}


class BackendClient:
    """Calls backends by their ``BackendConfig``; sessions follow the configuration snapshot.

    ``deadline`` is an absolute time on ``clock`` (``time.monotonic`` unless injected); the
    smaller of it and the backend's ``timeout_ms`` bounds a call. ``secrets`` is where the
    bearer tokens named by ``api_key_env`` are looked up (the process environment in production).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        secrets: Mapping[str, str] = os.environ,
        settings: PoolSettings | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._clock = clock
        self._secrets = secrets
        self._settings = settings or PoolSettings()
        self._max_response_bytes = max_response_bytes
        self._pools: dict[str, BackendPool] = {}
        self._retired: set[BackendPool] = set()  # replaced or removed, still finishing calls
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, backends: Iterable[BackendConfig]) -> None:
        """Open a session for each backend up front (otherwise each opens on its first call)."""
        await self.update(backends)

    async def update(self, backends: Iterable[BackendConfig]) -> None:
        """Follow a new configuration snapshot: new backends get sessions, changed ones new
        sessions; replaced and removed sessions close once their in-flight calls have finished."""
        wanted = {backend.id: backend for backend in backends}
        for backend_id, pool in list(self._pools.items()):
            config = wanted.get(backend_id)
            if config is None:
                del self._pools[backend_id]
                self._retire(pool)
            elif not pool.matches(config):
                self._replace(config)
        for backend_id, config in wanted.items():
            if backend_id not in self._pools:
                self._replace(config)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def close(self) -> None:
        """Close every session, busy or not (at shutdown, after the server stopped taking requests)."""
        self._closed = True
        pools = [*self._pools.values(), *self._retired]
        self._pools, self._retired = {}, set()
        for pool in pools:
            pool.retired = True
        await asyncio.gather(*(pool.close() for pool in pools), *self._closing, return_exceptions=True)

    def in_flight(self, backend_id: str) -> int:
        """Calls to ``backend_id`` now under way on its current session."""
        pool = self._pools.get(backend_id)
        return pool.in_flight if pool is not None else 0

    async def send(self, backend: BackendConfig, request: BackendRequest) -> BackendReply:
        """The port's non-streamed call: POST to the kind's path."""
        return await self.post_json(
            backend,
            BACKEND_PATHS[request.kind],
            request.body,
            traceparent=request.traceparent,
            request_id=request.request_id,
            deadline=request.deadline,
        )

    async def open_stream(self, backend: BackendConfig, request: BackendRequest) -> OpenedBackendStream:
        """The port's streamed call: errors before the first block surface here."""
        opened = self.stream(
            backend,
            BACKEND_PATHS[request.kind],
            request.body,
            traceparent=request.traceparent,
            request_id=request.request_id,
            deadline=request.deadline,
        )
        return OpenedBackendStream(opened, await opened.__aenter__())

    async def post_json(
        self,
        backend: BackendConfig,
        path: str,
        body: bytes,
        *,
        traceparent: str,
        request_id: str,
        deadline: float | None,
    ) -> BackendReply:
        """POST a JSON ``body`` to ``path`` under the backend's base URL; a 2xx JSON object or an error."""
        pool = self._pool(backend)
        remaining = self._remaining(backend.id, deadline)
        timeout, deadline_bound = pool.call_timeout(remaining)
        headers = {**pool.json_headers, "traceparent": traceparent, "X-Request-ID": request_id}
        started = self._clock()
        pool.in_flight += 1
        CONNECTED.set(False)
        try:
            try:
                response = await pool.session.post(
                    pool.url(path), data=body, headers=headers, timeout=timeout, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError) as exc:  # session.post returns with the headers
                raise map_transport_error(
                    exc,
                    backend.id,
                    deadline_bound=deadline_bound,
                    before_response=True,
                    connected=CONNECTED.get(),
                ) from None
            status = response.status
            failed = status < 200 or status >= 300
            try:
                payload = await read_limited(
                    response,
                    _MAX_ERROR_BODY_BYTES if failed else self._max_response_bytes,
                    backend_id=backend.id,
                    truncate=failed,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                response.close()
                raise map_transport_error(exc, backend.id, deadline_bound=False) from None
            except BaseException:
                response.close()
                raise
            response.release()  # back to the pool when read whole, closed otherwise
        finally:
            self._done(pool)
        if failed:
            raise error_for_status(backend.id, status, payload, response.headers)
        document = _json_object(payload)
        if document is None:
            raise BackendCallError(
                "BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id=backend.id
            )
        elapsed_ms = (self._clock() - started) * 1000
        return BackendReply(status, payload, response.headers, elapsed_ms, document)

    def stream(
        self,
        backend: BackendConfig,
        path: str,
        body: bytes,
        *,
        traceparent: str,
        request_id: str,
        deadline: float | None,
    ) -> BackendStream:
        """POST a streaming request; ``async with`` it to get an async iterator of raw SSE blocks.

        Failures until the first block is handed out raise ``BackendCallError``; later ones raise
        ``StreamBroken``. The deadline bounds the time to the first block; after that each read
        waits at most the backend's ``timeout_ms``. Leaving the block early closes the connection.
        """
        pool = self._pool(backend)
        remaining = self._remaining(backend.id, deadline)
        first_event_s = pool.total_s if remaining is None else min(remaining, pool.total_s)
        timeout, deadline_bound = pool.stream_timeout(first_event_s)
        call = StreamCall(
            backend_id=backend.id,
            session=pool.session,
            url=pool.url(path),
            body=body,
            headers={**pool.stream_headers, "traceparent": traceparent, "X-Request-ID": request_id},
            timeout=timeout,
            first_event_s=first_event_s,
            deadline_bound=deadline_bound,
            max_error_body=_MAX_ERROR_BODY_BYTES,
        )
        return BackendStream(call, on_enter=lambda: self._begin(pool), on_exit=lambda: self._done(pool))

    def _pool(self, backend: BackendConfig) -> BackendPool:
        pool = self._pools.get(backend.id)
        if pool is None or not pool.matches(backend):
            if self._closed:
                raise BackendCallError(
                    "BACKEND_UNAVAILABLE", reason="closed", maybe_processed=False, backend_id=backend.id
                )
            pool = self._replace(backend)
        if pool.missing_secret:
            raise BackendCallError(
                "BACKEND_UNAVAILABLE",
                reason="config",
                maybe_processed=False,
                backend_id=backend.id,
                message="The backend's credential is not set on this router (see /v1/status/readyz).",
            )
        return pool

    def _remaining(self, backend_id: str, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise BackendCallError(
                "BACKEND_TIMEOUT", reason="deadline", maybe_processed=False, backend_id=backend_id
            )
        return remaining

    def _replace(self, config: BackendConfig) -> BackendPool:
        old = self._pools.get(config.id)
        pool = BackendPool(config, secrets=self._secrets, settings=self._settings)
        self._pools[config.id] = pool
        if old is not None:
            self._retire(old)
        return pool

    def _retire(self, pool: BackendPool) -> None:
        pool.retired = True
        if pool.in_flight == 0:
            self._close_later(pool)
        else:
            self._retired.add(pool)

    @staticmethod
    def _begin(pool: BackendPool) -> None:
        pool.in_flight += 1

    def _done(self, pool: BackendPool) -> None:
        pool.in_flight -= 1
        if pool.retired and pool.in_flight == 0 and not self._closed:
            self._close_later(pool)

    def _close_later(self, pool: BackendPool) -> None:
        self._retired.discard(pool)
        task = asyncio.get_running_loop().create_task(pool.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
