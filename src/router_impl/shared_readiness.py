"""Readiness of the stores the request path shares across workers and replicas (issue 15.4).

Each check asks the store itself (Redis: a PING bounded well inside the probe timeout), so readiness
never says "reachable" from a stale memory of the last request. ``fail`` when requests cannot succeed,
``warn`` when they succeed degraded:

- ``idempotency``: Redis unreachable fails (every request with an idempotency key, so every
  ``/v1/inference``, gets 503).
- ``limits``: Redis unreachable warns (``fail_open`` organisations use per-process limits,
  ``fail_closed`` ones get 503); otherwise what ``LimitsService`` knows.
- ``nonces``: Redis unreachable warns (signed requests get 503).

Without Redis these stores are embedded; several workers then refuse to start (``settings``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from router_impl.process_health import CheckStatus, HealthCheck

Probe = Callable[[], Awaitable[tuple[CheckStatus, str]]]
PING_TIMEOUT_SECONDS = 0.3  # inside HealthService's probe timeout, so the check decides the status


async def redis_unreachable(ping: Callable[[], Awaitable[object]]) -> str | None:
    """Why Redis does not answer a PING now, or None when it does."""
    try:
        await asyncio.wait_for(ping(), PING_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {PING_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # any failure to answer is the answer
        return type(exc).__name__
    return None


def shared_store_checks(
    *,
    ping: Callable[[], Awaitable[object]] | None,
    limits: Probe,
    idempotency_store: str,
) -> list[HealthCheck]:
    """``ping`` is the shared Redis's PING (None without Redis); ``limits`` the limits service's own
    check; ``idempotency_store`` the embedded store's kind (``lmdb`` or ``memory``)."""

    async def idempotency() -> tuple[CheckStatus, str]:
        if ping is None:
            return "pass", f"embedded ({idempotency_store})"
        down = await redis_unreachable(ping)
        if down is not None:
            return "fail", (
                f"shared idempotency store (Redis) unreachable ({down}): requests with an "
                "idempotency key, every /v1/inference among them, get 503"
            )
        return "pass", "shared idempotency store (Redis) reachable"

    async def shared_limits() -> tuple[CheckStatus, str]:
        if ping is not None:
            down = await redis_unreachable(ping)
            if down is not None:
                return "warn", (
                    f"shared limit store (Redis) unreachable ({down}): fail_open organisations use "
                    "per-process limits, fail_closed ones get 503"
                )
        return await limits()

    async def nonces() -> tuple[CheckStatus, str]:
        if ping is None:
            return "pass", "in-process replay window"
        down = await redis_unreachable(ping)
        if down is not None:
            return "warn", f"shared nonce store (Redis) unreachable ({down}): signed requests get 503"
        return "pass", "shared nonce store (Redis) reachable"

    return [
        HealthCheck("limits", shared_limits),
        HealthCheck("idempotency", idempotency),
        HealthCheck("nonces", nonces),
    ]
