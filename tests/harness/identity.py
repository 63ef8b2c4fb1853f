"""A controllable identity service (openapi/external/identity.yaml) on a loopback port, in a thread.

Keys are registered by secret or hash; faults: `down()` refuses connections (the port is
closed), `configure(reset=True)` drops each connection, `latency_ms`, `fixed_status`.
Standalone: `python -m tests.harness.identity --port 8002 --token t`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import re
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.harness.backend import _drop_connection
from tests.harness.threaded_server import AppServer, serve_until_signalled

VALIDATE_PATH = "/v1/keys/validate"
REVOCATIONS_PATH = "/v1/keys/revocations"
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class IdentityControls:
    latency_ms: int = 0
    fixed_status: int | None = None  # e.g. 500 or 503: every call answers it
    reset: bool = False  # drop every connection without an answer
    cache_ttl_seconds: int = 60


@dataclass
class IdentityKey:
    id: str
    organization_id: str
    scopes: list[str]
    revoked: bool = False
    signature_required: bool = False
    signing_secret: str | None = None
    allowed_models: list[str] | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def descriptor(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "organization_id": self.organization_id,
            "scopes": self.scopes,
            "revoked": self.revoked,
            "signature_required": self.signature_required,
        }
        if self.signing_secret is not None:
            body["signing_secret"] = self.signing_secret
        if self.allowed_models is not None:
            body["allowed_models"] = self.allowed_models
        if self.expires_at is not None:
            body["expires_at"] = self.expires_at.isoformat()
        return body


class MockIdentityService(AppServer):
    thread_name = "mock-identity"

    def __init__(self, port: int = 0, token: str = "identity-test-token") -> None:
        super().__init__(port)
        self.token = token
        self.controls = IdentityControls()
        self._keys: dict[str, IdentityKey] = {}
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    # ------------------------------------------------------------------ control

    def add_key(self, secret: str | None = None, *, key_hash: str | None = None, **fields: Any) -> str:
        """Register a key (by secret or by hash); returns its hash. Fields as in IdentityKey."""
        key_hash = key_hash or hashlib.sha256((secret or "").encode()).hexdigest()
        fields.setdefault("scopes", ["inference"])
        with self._lock:
            self._keys[key_hash] = IdentityKey(**fields)
        return key_hash

    def revoke(self, key_id: str) -> None:
        with self._lock:
            for key in self._keys.values():
                if key.id == key_id:
                    key.revoked, key.revoked_at = True, datetime.now(UTC)

    def configure(self, **changes: Any) -> None:
        self.controls = dataclasses.replace(self.controls, **changes)

    def reset(self) -> None:
        with self._lock:
            self._keys.clear()
            self._calls.clear()
        self.controls = IdentityControls()

    def calls(self, path: str = VALIDATE_PATH) -> int:
        with self._lock:
            return self._calls[path]

    # ---------------------------------------------------------------- app

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(VALIDATE_PATH, self._validate)
        app.router.add_get(REVOCATIONS_PATH, self._revocations)
        return app

    # ----------------------------------------------------------------- handlers

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        with self._lock:
            self._calls[request.path] += 1
        controls = self.controls
        if controls.latency_ms:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.reset:
            _drop_connection(request)
            return web.Response(status=500)
        if controls.fixed_status is not None:
            return _error(controls.fixed_status, "MOCK_FAULT", "mock identity fault")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "UNAUTHORIZED", "bad service token")
        return None

    async def _validate(self, request: web.Request) -> web.StreamResponse:
        fault = await self._fault(request)
        if fault is not None:
            return fault
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", "body is not JSON")
        if not isinstance(body, dict) or set(body) != {"key_hash"} or not _HASH.match(str(body["key_hash"])):
            return _error(400, "BAD_REQUEST", "expected {key_hash}")
        with self._lock:
            key = self._keys.get(body["key_hash"])
            descriptor = None if key is None else key.descriptor()
            valid = key is not None and not key.revoked
        if descriptor is None:
            return _error(404, "NOT_FOUND", "no such key")
        return web.json_response(
            {"valid": valid, "key": descriptor, "cache_ttl_seconds": self.controls.cache_ttl_seconds}
        )

    async def _revocations(self, request: web.Request) -> web.StreamResponse:
        fault = await self._fault(request)
        if fault is not None:
            return fault
        since_raw = request.query.get("since")
        since = datetime.fromisoformat(since_raw) if since_raw else None
        with self._lock:
            revoked = sorted(
                (k.revoked_at, k.id)
                for k in self._keys.values()
                if k.revoked_at is not None and (since is None or k.revoked_at >= since)
            )
        limit = int(request.query.get("limit", "1000"))
        page = revoked[:limit]
        # Just past the last one, so the next poll ("at or after") does not repeat it.
        next_since = page[-1][0] + timedelta(microseconds=1) if page else (since or datetime.now(UTC))
        return web.json_response(
            {
                "revoked": [{"id": key_id, "revoked_at": at.isoformat()} for at, key_id in page],
                "next_since": next_since.isoformat(),
            }
        )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the mock identity service until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="identity-test-token")
    args = parser.parse_args(argv)
    serve_until_signalled(MockIdentityService(port=args.port, token=args.token), "mock identity service")


if __name__ == "__main__":
    main()
