"""A controllable budget service (openapi/external/budget.yaml) on a loopback port, in a thread.

Budgets are set per organisation (unknown ones answer 404); faults: `fixed_status` (with
`retry_after` for a 429), `hang`, `latency_ms`, `reset` (drop the connection), `bad_json`,
`wrong_org`, `raw_body` (served verbatim), and `down()` (the port is closed). Every call is counted
per organisation; a wrong bearer token answers 401.
Standalone: `python -m tests.harness.budget_service --port 8003 --token t`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.harness.backend import _drop_connection
from tests.harness.threaded_server import AppServer, serve_until_signalled

BUDGET_ROUTE = "/v1/orgs/{org_id}/budget"


@dataclass(frozen=True)
class BudgetControls:
    cache_ttl_seconds: int = 60
    latency_ms: int = 0
    hang: bool = False  # never answer (until the client gives up or the server stops)
    reset: bool = False  # drop every connection without an answer
    fixed_status: int | None = None  # e.g. 500, 503 or 429: every call answers it
    retry_after: str | None = None  # the Retry-After header sent with fixed_status
    bad_json: bool = False  # a 200 whose body is not JSON
    wrong_org: bool = False  # a 200 carrying another organisation's id
    raw_body: bytes | None = None  # a 200 with exactly this body (numbers as written)


class MockBudgetService(AppServer):
    thread_name = "mock-budget-service"

    def __init__(self, port: int = 0, token: str = "budget-test-token") -> None:
        super().__init__(port)
        self.token = token
        self.controls = BudgetControls()
        self._budgets: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    # ------------------------------------------------------------------ control

    def set_budget(
        self,
        org_id: str,
        *,
        daily_tokens: int | None = None,
        monthly_tokens: int | None = None,
        daily_usd: float | None = None,
        monthly_usd: float | None = None,
        currency: str = "USD",
        **extra: Any,
    ) -> None:
        """Define (or replace) an organisation's budgets; None leaves that kind out of the answer."""
        limits = {
            "daily_tokens": daily_tokens,
            "monthly_tokens": monthly_tokens,
            "daily_usd": daily_usd,
            "monthly_usd": monthly_usd,
        }
        body = {k: v for k, v in limits.items() if v is not None} | {"currency": currency} | extra
        with self._lock:
            self._budgets[org_id] = body

    def remove_budget(self, org_id: str) -> None:
        with self._lock:
            self._budgets.pop(org_id, None)

    def configure(self, **changes: Any) -> None:
        self.controls = dataclasses.replace(self.controls, **changes)

    def reset(self) -> None:
        with self._lock:
            self._budgets.clear()
            self._calls.clear()
        self.controls = BudgetControls()

    def calls(self, org_id: str | None = None) -> int:
        """Calls received (for one organisation, or all), including refused and faulted ones."""
        with self._lock:
            return self._calls[org_id] if org_id is not None else sum(self._calls.values())

    # ---------------------------------------------------------------- app

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(BUDGET_ROUTE, self._budget)
        return app

    # ----------------------------------------------------------------- handler

    async def _budget(self, request: web.Request) -> web.StreamResponse:
        org_id = request.match_info["org_id"]
        with self._lock:
            self._calls[org_id] += 1
            budget = self._budgets.get(org_id)
        controls = self.controls
        if controls.latency_ms:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.hang and self._stopping is not None:
            await self._stopping.wait()
        if controls.reset:
            _drop_connection(request)
            return web.Response(status=500)  # never reaches the client: the socket is gone
        if controls.fixed_status is not None:
            headers = {"Retry-After": controls.retry_after} if controls.retry_after is not None else None
            return _error(controls.fixed_status, "MOCK_FAULT", "mock budget service fault", headers)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "UNAUTHORIZED", "bad service token")
        if controls.raw_body is not None:
            return web.Response(body=controls.raw_body, content_type="application/json")
        if controls.bad_json:
            return web.Response(text='{"organization_id": ', content_type="application/json")
        if budget is None:
            return _error(404, "NOT_FOUND", "unknown organisation")
        return web.json_response(
            {
                "organization_id": "someone-else" if controls.wrong_org else org_id,
                **budget,
                "updated_at": datetime.now(UTC).isoformat(),
                "cache_ttl_seconds": controls.cache_ttl_seconds,
            }
        )


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers=headers)


def raw_answer(org_id: str = "org-a", **fields: str) -> bytes:
    """An answer body with numbers exactly as written (the mock would re-serialise floats)."""
    body = {
        "organization_id": f'"{org_id}"',
        "currency": '"USD"',
        "updated_at": '"2026-11-27T12:00:00Z"',
        "cache_ttl_seconds": "60",
    } | fields
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}").encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the mock budget service until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="budget-test-token")
    args = parser.parse_args(argv)
    serve_until_signalled(MockBudgetService(port=args.port, token=args.token), "mock budget service")


if __name__ == "__main__":
    main()
