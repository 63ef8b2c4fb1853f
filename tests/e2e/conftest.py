"""End-to-end fixtures: real `router serve` subprocesses in front of mock OpenAI backends on loopback.

One *main* router (embedded LMDB stores) is shared by the whole package; it serves

- ``mock-model`` (alias ``mock-alias``) and ``other-model`` from the healthy backend ``mock-a``;
- ``faulty-model`` from ``mock-f``, a second backend with a 500 ms timeout that tests break on purpose.

Its keys (see ``KEYS``) cover the auth matrix. Tests reset the backends' controls and counters
through the ``mock`` and ``faulty`` fixtures, so sharing the router does not couple them.

Every response a router gives to a client made here is kept; at the end of each test every
non-streaming one is validated against the contract (``assert_conforms``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from aiohttp import web

from router_impl.auth.secret_box import SecretBox
from router_impl.auth.signing import sign_request
from router_impl.usage.outbox import read_backlog
from tests.contract.openapi_check import assert_conforms
from tests.harness import backend_responses as responses
from tests.harness.backend import BackendControls, MockBackend
from tests.harness.config_docs import backend_doc, key_record, model_doc, write_config
from tests.harness.records import request_ref
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until

# A fixed master key, so a test can seal a signing secret the routers can open.
SECRET_KEY = "e2e-router-secret-key-0123456789abcdef"
ORG = "org-e2e"
MODEL = "mock-model"
ALIAS = "mock-alias"
OTHER_MODEL = "other-model"
FAULTY_MODEL = "faulty-model"
BACKEND_ID = "mock-a"
FAULTY_BACKEND_ID = "mock-f"
FAULTY_TIMEOUT_MS = 500
# USD per million tokens; chosen so that every cost in these tests is whole micro-dollars.
PRICE_IN = Decimal("3.00")
PRICE_OUT = Decimal("15.00")
SIGNING_SECRET = "rs_e2e-config-signing-secret-0123456789"


@dataclass(frozen=True)
class Key:
    id: str
    secret: str
    record: dict[str, Any]


def _key(key_id: str, secret: str, scopes: list[str], **extra: Any) -> Key:
    return Key(key_id, secret, key_record(key_id, ORG, secret, scopes, **extra))


def _signer_key() -> Key:
    box = SecretBox.from_settings(SECRET_KEY, Path("/nonexistent"))  # the data dir is unused with a key
    sealed = box.encrypt(SIGNING_SECRET, context="key-signer")
    return _key(
        "key-signer",
        "rk_e2e_signer",
        ["inference"],
        signature_required=True,
        signing_secret_enc=sealed,
    )


KEYS: dict[str, Key] = {
    k.id.removeprefix("key-"): k
    for k in (
        _key("key-user", "rk_e2e_user", ["inference", "audit"]),
        _key("key-audit", "rk_e2e_audit_only", ["audit"]),
        _key("key-admin", "rk_e2e_admin", ["admin"]),
        _key("key-expired", "rk_e2e_expired", ["inference"], expires_at="2020-01-01T00:00:00Z"),
        _key("key-revoked", "rk_e2e_revoked", ["inference"], revoked=True),
        _key("key-restricted", "rk_e2e_restricted", ["inference"], allowed_models=[OTHER_MODEL]),
        _signer_key(),
    )
}


# ---------------------------------------------------------------- backends


class ObservedBackend(MockBackend):
    """The mock backend, also noting how each streamed answer ended and when.

    ``stream_endings`` holds ``(outcome, chunks_written, monotonic_time)``: outcome ``"finished"``
    when the handler returned normally, else the name of the exception that stopped it (the
    router hung up, e.g. ``ClientConnectionResetError``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_endings: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self.stream_endings.clear()

    async def _stream(
        self, request: web.Request, chunks: list[responses.JsonObject], controls: BackendControls
    ) -> web.StreamResponse:
        written = 0

        def counted() -> Iterator[responses.JsonObject]:  # the parent only iterates over its chunks
            nonlocal written
            for chunk in chunks:
                yield chunk
                written += 1  # the parent asks for the next chunk once this one is written

        outcome = "finished"
        try:
            return await super()._stream(request, counted(), controls)  # type: ignore[arg-type]
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            with self._lock:
                self.stream_endings.append((outcome, written, time.monotonic()))


@pytest.fixture(scope="package")
def backend_a() -> Iterator[ObservedBackend]:
    with ObservedBackend(models=(MODEL, OTHER_MODEL)) as backend:
        yield backend


@pytest.fixture(scope="package")
def backend_f() -> Iterator[MockBackend]:
    with MockBackend(models=(FAULTY_MODEL,)) as backend:
        yield backend


@pytest.fixture
def mock(backend_a: ObservedBackend) -> Iterator[ObservedBackend]:
    """The healthy backend behind ``mock-model``, with default controls and zeroed counters."""
    backend_a.reset_controls()
    backend_a.reset_counters()
    yield backend_a
    backend_a.reset_controls()


@pytest.fixture
def faulty(backend_f: MockBackend) -> Iterator[MockBackend]:
    """The backend behind ``faulty-model``; restarted (same port) when a test stopped it."""
    backend_f.start()
    backend_f.reset_controls()
    backend_f.reset_counters()
    yield backend_f
    backend_f.reset_controls()
    backend_f.start()


# ---------------------------------------------------------------- routers


def runtime_config(backend: MockBackend, faulty_backend: MockBackend) -> dict[str, Any]:
    pricing = {"input_usd_per_1m_tokens": str(PRICE_IN), "output_usd_per_1m_tokens": str(PRICE_OUT)}
    return {
        "backends": [
            backend_doc(BACKEND_ID, f"{backend.base_url}/v1", MODEL, OTHER_MODEL),
            backend_doc(
                FAULTY_BACKEND_ID,
                f"{faulty_backend.base_url}/v1",
                FAULTY_MODEL,
                timeout_ms=FAULTY_TIMEOUT_MS,
                connect_timeout_ms=200,
            ),
        ],
        "models": [
            model_doc(MODEL, BACKEND_ID, aliases=[ALIAS], pricing=pricing),
            model_doc(OTHER_MODEL, BACKEND_ID),
            # These tests break the backend on purpose to check error mapping; the breaker is tested
            # on its own (tests/e2e/test_failover.py), so it must not open here.
            model_doc(FAULTY_MODEL, FAULTY_BACKEND_ID, failover_threshold=100),
        ],
        "api_keys": [key.record for key in KEYS.values()],
    }


@pytest.fixture(scope="package")
def make_config(
    tmp_path_factory: pytest.TempPathFactory, backend_a: ObservedBackend, backend_f: MockBackend
) -> Callable[..., Path]:
    """Writes the e2e runtime config, plus ``extra_keys`` (records), to a new YAML file."""

    def make(extra_keys: tuple[dict[str, Any], ...] = ()) -> Path:
        config = runtime_config(backend_a, backend_f)
        config["api_keys"].extend(extra_keys)
        return write_config(tmp_path_factory.mktemp("e2e-config"), config)

    return make


@pytest.fixture(scope="package")
def config_path(make_config: Callable[..., Path]) -> Path:
    return make_config()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterFleet]:
    routers = RouterFleet(tmp_path_factory.mktemp("e2e-routers"))
    yield routers
    routers.close()


@pytest.fixture(scope="package")
def start_router(fleet: RouterFleet, config_path: Path) -> Callable[..., RouterProcess]:
    """Starts a router on the e2e config (or ``config``); ``env`` adds or overrides ROUTER_* variables."""

    def start(
        env: dict[str, str] | None = None, args: tuple[str, ...] = (), config: Path | None = None
    ) -> RouterProcess:
        base = {"ROUTER_CONFIG_PATH": str(config or config_path), "ROUTER_SECRET_KEY": SECRET_KEY}
        return fleet.start(env={**base, **(env or {})}, args=args)

    return start


@pytest.fixture(scope="package")
def router(start_router: Callable[..., RouterProcess]) -> RouterProcess:
    """The main router: embedded stores (LMDB keys, LMDB idempotency, in-memory nonces)."""
    return start_router()


# ---------------------------------------------------------------- clients and conformance


class Exchanges:
    """Every router response seen by clients made through ``clients``, validated at test end."""

    def __init__(self) -> None:
        self.responses: list[Any] = []

    def record(self, response: Any) -> None:
        self.responses.append(response)

    def assert_all_conform(self) -> None:
        checked = 0
        for response in self.responses:
            if "text/event-stream" in response.headers.get("content-type", ""):
                continue  # openapi-core cannot read an SSE body
            if not response.is_closed:
                response.read()
            try:
                assert_conforms(response)
            except Exception as exc:
                raise AssertionError(
                    f"{response.request.method} {response.request.url.path} -> {response.status_code} "
                    f"does not conform to the contract: {exc}\nbody: {response.content[:500]!r}"
                ) from exc
            checked += 1
        self.checked = checked


class Clients:
    """Factories for HTTP clients pointed at routers; all of them record into ``exchanges``."""

    def __init__(self, exchanges: Exchanges) -> None:
        self.exchanges = exchanges
        self._open: list[Any] = []

    def http(self, router: RouterProcess, timeout: float = 10.0) -> httpx.Client:
        client = httpx.Client(
            base_url=router.base_url,
            trust_env=False,
            timeout=timeout,
            event_hooks={"response": [self.exchanges.record]},
        )
        self._open.append(client)
        return client

    def async_http(self, router: RouterProcess, timeout: float = 10.0) -> httpx.AsyncClient:
        async def record(response: httpx.Response) -> None:
            self.exchanges.record(response)

        client = httpx.AsyncClient(
            base_url=router.base_url,
            trust_env=False,
            timeout=timeout,
            limits=httpx.Limits(max_connections=100),
            event_hooks={"response": [record]},
        )
        self._open.append(client)
        return client

    def openai(self, router: RouterProcess, api_key: str) -> openai.OpenAI:
        """The official client as a newcomer would point it at the router (no retries, to count calls)."""
        http_client = httpx2.Client(
            trust_env=False, timeout=10.0, event_hooks={"response": [self.exchanges.record]}
        )
        self._open.append(http_client)
        return openai.OpenAI(
            base_url=router.base_url + "/v1", api_key=api_key, max_retries=0, http_client=http_client
        )

    def close(self) -> None:
        for client in self._open:
            if isinstance(client, httpx.AsyncClient):
                continue  # closed by the async tests that made them
            client.close()


@pytest.fixture
def exchanges() -> Exchanges:
    return Exchanges()


@pytest.fixture
def clients(exchanges: Exchanges) -> Iterator[Clients]:
    made = Clients(exchanges)
    yield made
    made.close()
    exchanges.assert_all_conform()


@pytest.fixture
def http(clients: Clients, router: RouterProcess) -> httpx.Client:
    return clients.http(router)


# ---------------------------------------------------------------- helpers


def auth(key: Key | str) -> dict[str, str]:
    secret = key.secret if isinstance(key, Key) else key
    return {"Authorization": f"Bearer {secret}"}


def signed_headers(
    signing_secret: str, path: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    return sign_request(
        signing_secret, "POST", path, body, int(time.time()) if timestamp is None else timestamp
    )


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def usage_records(router: RouterProcess) -> list[dict[str, Any]]:
    """Every usage record the router wrote (JSON Lines under ``<data_dir>/usage``), once its outbox
    has published everything committed so far (records reach the files through the outbox)."""
    outbox = router.data_dir / "outbox"
    if outbox.exists():
        wait_until(lambda: read_backlog(outbox).count == 0, timeout=5.0)
    records = []
    for path in sorted((router.data_dir / "usage").glob("usage-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def records_for(router: RouterProcess, request_id: str) -> list[dict[str, Any]]:
    """A request id that is not a UUID is in the record as its UUIDv5, and itself in metadata.request_ref."""
    return [r for r in usage_records(router) if request_id in (r.get("request_id"), request_ref(r))]
