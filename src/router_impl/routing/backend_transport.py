"""aiohttp specifics shared by plain and streamed backend calls: error mapping and bounded reads."""

from __future__ import annotations

import aiohttp

from router_impl.routing.backend_errors import BackendCallError, FailureReason


def map_transport_error(
    exc: BaseException,
    backend_id: str,
    *,
    deadline_bound: bool,
    before_response: bool = False,
    connected: bool = True,
) -> BackendCallError:
    """The catalog error for an aiohttp or timeout failure before a complete answer arrived.

    ``deadline_bound`` says the caller's deadline (not the backend's connect timeout) limited
    the connect phase: running out of it is then the request's timeout, not an unreachable backend.
    ``before_response`` says no byte of the answer (not even its status line) had arrived: a
    broken connection is then a ``reset``, which may fail over (Envoy's ``retry_on: reset``).
    ``connected`` says the call had its connection: a timeout before that (the total timer can beat
    the pool wait's when both end at the deadline) is a connect timeout, nothing was sent.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError) or (isinstance(exc, TimeoutError) and not connected):
        return BackendCallError(
            "BACKEND_TIMEOUT" if deadline_bound else "BACKEND_UNAVAILABLE",
            reason="connect_timeout",
            maybe_processed=False,
            backend_id=backend_id,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS
        return BackendCallError(
            "BACKEND_UNAVAILABLE", reason="connect", maybe_processed=False, backend_id=backend_id
        )
    if isinstance(exc, TimeoutError):  # the total timeout or a read timeout, after sending
        return BackendCallError(
            "BACKEND_TIMEOUT", reason="timeout", maybe_processed=True, backend_id=backend_id
        )
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        broke: FailureReason = (
            "reset" if before_response and isinstance(exc, aiohttp.ClientConnectionError) else "disconnect"
        )
        return BackendCallError(
            "BACKEND_UNAVAILABLE", reason=broke, maybe_processed=True, backend_id=backend_id
        )
    # Unparseable status line or headers, and the like.
    return BackendCallError(
        "BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id=backend_id
    )


async def read_limited(
    response: aiohttp.ClientResponse, limit: int, *, backend_id: str, truncate: bool
) -> bytes:
    """The response body, at most ``limit`` bytes: cut short when ``truncate``, else an error."""
    length = response.content_length
    if length is not None and length <= limit:
        return await response.read()
    if length is not None and not truncate:
        raise _too_large(backend_id)
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await response.content.readany()
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    if not truncate:
        raise _too_large(backend_id)
    return b"".join(parts)[:limit]


def _too_large(backend_id: str) -> BackendCallError:
    return BackendCallError(
        "BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id=backend_id
    )
