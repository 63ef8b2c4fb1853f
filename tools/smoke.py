#!/usr/bin/env python3
"""Smoke test of a running router: health, auth, models, inference (plain and streamed), errors, metrics.

    python tools/smoke.py --url http://127.0.0.1:8080            # keys from ROUTER_API_KEY / ROUTER_ADMIN_KEY
    python tools/smoke.py --url ... --api-key rk-... --admin-key rk-... --check-limits

Checks, in order, stopping at the first failure (exit 1, with what was expected and what came back):

1. `GET /v1/status/healthz` is 200 and healthy or degraded; `GET /v1/status/readyz` is 200.
2. An unknown key is refused with 401 `INVALID_API_KEY`, and no key at all with 401.
3. `GET /v1/models` lists the model used next (`--model`, default the first listed).
4. A chat completion, non-streamed and streamed (ends with `[DONE]`, usage in the last chunk), with the
   routing headers (`X-Routing-Backend`, `X-Routing-Decision`) and our `X-Request-ID` echoed.
5. `POST /v1/inference` answers the envelope with usage and `limit_state`.
6. An invalid `/v1/inference` body is 400 in the contract's `ErrorResponse` shape.
7. `GET /metrics` exports `router_requests_total` (`--metrics-url` elsewhere, `--no-metrics` to skip).
8. With an admin key: `GET /v1/admin/backends` lists every backend with its state.
9. With `--check-limits` (needs the admin key): a throw-away key in organisation `router-smoke`
   (key rate limit 1/min) is refused with 429 `RATE_LIMIT_EXCEEDED` and `Retry-After`; the key is
   revoked afterwards. It writes to the router's config (the organisation's limits), so it is opt-in.

Standard library only, so it runs from any Python 3.11 without the project installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DECISIONS = {"PRIMARY", "FAILOVER", "OVERRIDE"}
SMOKE_ORG = "router-smoke"


class SmokeFailure(Exception):
    pass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise SmokeFailure(f"expected a JSON body, got {self.body[:300]!r}") from exc

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Client:
    base_url: str
    timeout: float
    opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(urllib.request.ProxyHandler({}))
    )

    def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        url: str | None = None,
    ) -> Reply:
        data = None
        sent = {"Accept": "*/*", **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        target = url or self.base_url + path
        request = urllib.request.Request(target, data=data, method=method, headers=sent)
        started = time.perf_counter()
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                raw, status, got = response.read(), response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, got = error.read(), error.code, error.headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SmokeFailure(f"{method} {target}: cannot reach the router: {reason}") from exc
        elapsed = (time.perf_counter() - started) * 1000
        return Reply(status, {k.lower(): v for k, v in got.items()}, raw, elapsed)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def expect_status(reply: Reply, status: int, what: str) -> None:
    expect(
        reply.status == status,
        f"{what}: expected HTTP {status}, got {reply.status}: {reply.body[:500].decode(errors='replace')}",
    )


def error_code(document: Any) -> str | None:
    """`code` of a contract ErrorResponse or of an OpenAI `{"error": {...}}` body."""
    if isinstance(document, dict):
        inner = document.get("error")
        if isinstance(inner, dict):
            return inner.get("code")
        return document.get("code")
    return None


@dataclass
class Smoke:
    client: Client
    api_key: str
    admin_key: str | None
    model: str | None
    metrics_url: str | None
    check_limits: bool
    out: Any = sys.stdout

    def report(self, name: str, detail: str) -> None:
        print(f"ok    {name:<22} {detail}", file=self.out, flush=True)

    # -- checks -----------------------------------------------------------------------------------

    def health(self) -> str:
        reply = self.client.request("GET", "/v1/status/healthz")
        expect_status(reply, 200, "healthz")
        document = reply.json()
        expect(
            document.get("status") in {"healthy", "degraded"}, f"healthz: status {document.get('status')!r}"
        )
        return f"{document['status']}, version {document.get('version')} ({reply.elapsed_ms:.0f} ms)"

    def readiness(self) -> str:
        reply = self.client.request("GET", "/v1/status/readyz")
        checks = []
        if reply.body:
            with contextlib.suppress(SmokeFailure):
                checks = reply.json().get("checks") or []
        failing = [
            f"{c.get('name')}={c.get('status')}: {c.get('details')}"
            for c in checks
            if c.get("status") != "pass"
        ]
        expect(
            reply.status == 200,
            f"readyz: expected HTTP 200, got {reply.status}; not passing: {failing or reply.body[:300]!r}",
        )
        document = reply.json()
        expect(isinstance(document.get("ready_backends"), int), "readyz: no ready_backends count")
        warned = f"; warn: {'; '.join(failing)}" if failing else ""
        return f"{document['status']}, ready backends {document.get('ready_backend_ids')}{warned}"

    def auth_failure(self) -> str:
        bogus = self.client.request("GET", "/v1/models", key="rk-smoke-not-a-key-" + uuid.uuid4().hex)
        expect_status(bogus, 401, "unknown key")
        expect(
            error_code(bogus.json()) == "INVALID_API_KEY",
            f"unknown key: expected code INVALID_API_KEY, got {bogus.body[:300]!r}",
        )
        anonymous = self.client.request("GET", "/v1/models")
        expect_status(anonymous, 401, "no key")
        return f"unknown key 401 INVALID_API_KEY, no key 401 {error_code(anonymous.json())}"

    def models(self) -> str:
        reply = self.client.request("GET", "/v1/models", key=self.api_key)
        expect_status(reply, 200, "/v1/models (is the API key valid, with scope inference?)")
        ids = [m.get("id") for m in reply.json().get("data") or []]
        expect(bool(ids), "/v1/models: the key may use no model")
        if self.model is None:
            self.model = ids[0]
        expect(self.model in ids, f"/v1/models: model {self.model!r} is not listed ({ids})")
        return f"{len(ids)} models, using {self.model!r}"

    def _routing(self, reply: Reply, what: str, request_id: str | None = None) -> str:
        backend, decision = reply.header("x-routing-backend"), reply.header("x-routing-decision")
        expect(bool(backend), f"{what}: no X-Routing-Backend header")
        expect(decision in DECISIONS, f"{what}: X-Routing-Decision {decision!r} is not one of {DECISIONS}")
        if request_id is not None:
            expect(
                reply.header("x-request-id") == request_id,
                f"{what}: X-Request-ID {reply.header('x-request-id')!r} is not ours ({request_id})",
            )
        return f"{backend} {decision}"

    def chat(self) -> str:
        request_id = str(uuid.uuid4())
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "smoke test"}],
            "max_tokens": 16,
        }
        reply = self.client.request(
            "POST", "/v1/chat/completions", key=self.api_key, body=body, headers={"X-Request-ID": request_id}
        )
        expect_status(reply, 200, "chat completion")
        document = reply.json()
        choices = document.get("choices") or []
        expect(bool(choices), f"chat completion: no choices in {reply.body[:300]!r}")
        expect(
            isinstance(choices[0].get("message", {}).get("content"), str),
            "chat completion: no message content",
        )
        expect(isinstance(document.get("usage"), dict), "chat completion: no usage block")
        routed = self._routing(reply, "chat completion", request_id)
        return f"{routed}, {document['usage'].get('total_tokens')} tokens ({reply.elapsed_ms:.0f} ms)"

    def chat_stream(self) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "smoke test stream"}],
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        reply = self.client.request("POST", "/v1/chat/completions", key=self.api_key, body=body)
        expect_status(reply, 200, "streamed chat completion")
        expect(
            (reply.header("content-type") or "").startswith("text/event-stream"),
            f"streamed chat completion: content type {reply.header('content-type')!r}",
        )
        events = [line[5:].strip() for line in reply.body.decode().splitlines() if line.startswith("data:")]
        expect(bool(events) and events[-1] == "[DONE]", f"stream does not end with [DONE]: {events[-3:]}")
        chunks = [json.loads(event) for event in events[:-1]]
        errors = [c for c in chunks if "error" in c]
        expect(not errors, f"stream carried an error event: {errors[:1]}")
        expect(bool(chunks), "stream has no chunks before [DONE]")
        usage = chunks[-1].get("usage")
        expect(isinstance(usage, dict), f"stream: no usage in the last chunk ({chunks[-1]})")
        routed = self._routing(reply, "streamed chat completion")
        return (
            f"{routed}, {len(chunks)} chunks, {usage.get('total_tokens')} tokens ({reply.elapsed_ms:.0f} ms)"
        )

    def inference(self) -> str:
        request_id = str(uuid.uuid4())
        body = {"request_id": request_id, "model": self.model, "payload": "smoke test envelope"}
        reply = self.client.request("POST", "/v1/inference", key=self.api_key, body=body)
        expect_status(reply, 200, "/v1/inference")
        document = reply.json()
        expect(
            document.get("request_id") == request_id,
            f"/v1/inference: request_id {document.get('request_id')!r}",
        )
        usage = document.get("usage") or {}
        expect("limit_state" in usage, f"/v1/inference: usage without limit_state: {usage}")
        expect(bool(document.get("trace_id")), "/v1/inference: no trace_id")
        routed = self._routing(reply, "/v1/inference")
        return f"{routed}, {usage.get('limit_state')} ({reply.elapsed_ms:.0f} ms)"

    def invalid_request(self) -> str:
        reply = self.client.request("POST", "/v1/inference", key=self.api_key, body={"model": self.model})
        expect_status(reply, 400, "invalid /v1/inference body")
        document = reply.json()
        expect(isinstance(document, dict), "invalid request: the body is not an object")
        for name in ("error", "code", "trace_id"):
            expect(bool(document.get(name)), f"invalid request: no {name!r} in {reply.body[:300]!r}")
        expect(
            document["code"] in {"VALIDATION_ERROR", "INVALID_REQUEST"},
            f"invalid request: code {document['code']!r}",
        )
        details = document.get("details")
        expect(details is None or isinstance(details, list), "invalid request: details is not a list")
        return f"400 {document['code']}" + (f", {len(details)} details" if details else "")

    def metrics(self) -> str:
        assert self.metrics_url is not None
        reply = self.client.request("GET", "", url=self.metrics_url)
        expect_status(reply, 200, f"metrics ({self.metrics_url})")
        text = reply.body.decode(errors="replace")
        expect("router_requests_total" in text, "metrics: router_requests_total is not exported")
        families = sum(1 for line in text.splitlines() if line.startswith("# TYPE router_"))
        return f"{families} router_* families"

    def admin(self) -> str:
        assert self.admin_key is not None
        reply = self.client.request("GET", "/v1/admin/backends", key=self.admin_key)
        expect_status(reply, 200, "GET /v1/admin/backends (is the admin key valid, with scope admin?)")
        items = reply.json().get("items") or []
        states = ", ".join(f"{b.get('id')}={b.get('state')}/{b.get('breaker_state')}" for b in items)
        return f"{len(items)} backends: {states}"

    def limit_denial(self) -> str:
        assert self.admin_key is not None
        limits = {"key_rate_limits": {"requests_per_minute": 1, "burst": 1}}
        reply = self.client.request(
            "PUT", f"/v1/admin/orgs/{SMOKE_ORG}/limits", key=self.admin_key, body=limits
        )
        expect_status(reply, 200, f"PUT /v1/admin/orgs/{SMOKE_ORG}/limits")
        created = self.client.request(
            "POST",
            "/v1/admin/keys",
            key=self.admin_key,
            body={"organization_id": SMOKE_ORG, "scopes": ["inference"], "name": "smoke limit check"},
        )
        expect_status(created, 201, "POST /v1/admin/keys")
        key_id, secret = created.json()["key"]["id"], created.json()["secret"]
        try:
            return self._denied(secret)
        finally:
            self.client.request(
                "POST",
                f"/v1/admin/keys/{key_id}/revoke",
                key=self.admin_key,
                body={"reason": "smoke test done"},
            )

    def _denied(self, secret: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": "limit"}], "max_tokens": 4}
        deadline = time.monotonic() + 10  # replicas apply a new key and limits within moments
        seen: list[int] = []
        while time.monotonic() < deadline and len(seen) < 50:
            reply = self.client.request("POST", "/v1/chat/completions", key=secret, body=body)
            seen.append(reply.status)
            if reply.status == 429:
                document = reply.json()
                expect(
                    error_code(document) == "RATE_LIMIT_EXCEEDED", f"429 with code {error_code(document)!r}"
                )
                expect(bool(reply.header("retry-after")), "429 without Retry-After")
                retry_after = reply.header("retry-after")
                return f"429 RATE_LIMIT_EXCEEDED after {len(seen) - 1} allowed, Retry-After {retry_after}"
            expect(
                reply.status in {200, 401},
                f"limit check: unexpected HTTP {reply.status}: {reply.body[:300]!r}",
            )
            time.sleep(0.2 if reply.status == 401 else 0.05)  # 401: the new key has not reached this replica
        statuses = ", ".join(f"{count} x {status}" for status, count in sorted(Counter(seen).items()))
        raise SmokeFailure(
            f"limit check: no 429 after {len(seen)} requests ({statuses}) with key rate limit 1/min in "
            f"organisation {SMOKE_ORG!r}; are organisation limits applied?"
        )

    # -- run ----------------------------------------------------------------------------------------

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        found: list[tuple[str, Callable[[], str]]] = [
            ("healthz", self.health),
            ("readyz", self.readiness),
            ("auth failure", self.auth_failure),
            ("models", self.models),
            ("chat completion", self.chat),
            ("chat stream", self.chat_stream),
            ("inference", self.inference),
            ("invalid request", self.invalid_request),
        ]
        if self.metrics_url:
            found.append(("metrics", self.metrics))
        if self.admin_key:
            found.append(("admin backends", self.admin))
        if self.check_limits:
            found.append(("rate-limit denial", self.limit_denial))
        return found

    def run(self) -> int:
        for name, check in self.checks():
            try:
                detail = check()
            except SmokeFailure as exc:
                print(f"FAIL  {name:<22} {exc}", file=self.out, flush=True)
                return 1
            except Exception as exc:  # an unexpected shape (KeyError, bad JSON, ...) is a failure too
                print(f"FAIL  {name:<22} {type(exc).__name__}: {exc}", file=self.out, flush=True)
                return 1
            self.report(name, detail)
        print(f"smoke test passed against {self.client.base_url}", file=self.out, flush=True)
        return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ROUTER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("ROUTER_API_KEY"), help="default: ROUTER_API_KEY")
    parser.add_argument(
        "--admin-key", default=os.environ.get("ROUTER_ADMIN_KEY"), help="optional; default: ROUTER_ADMIN_KEY"
    )
    parser.add_argument("--model", help="model to call (default: the first one /v1/models lists)")
    parser.add_argument("--metrics-url", help="default: URL/metrics")
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="skip the /metrics check (e.g. through the chart's Ingress, which does not route /metrics)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument(
        "--check-limits",
        action="store_true",
        help=f"also prove a 429 with a throw-away key in organisation {SMOKE_ORG!r} (needs --admin-key)",
    )
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key with scope inference is needed (--api-key or ROUTER_API_KEY)")
    if args.check_limits and not args.admin_key:
        parser.error("--check-limits needs an admin key (--admin-key or ROUTER_ADMIN_KEY)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.url.rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        print(f"smoke: {args.url!r} is not an http(s) URL", file=sys.stderr)
        return 2
    smoke = Smoke(
        client=Client(base, args.timeout),
        api_key=args.api_key,
        admin_key=args.admin_key,
        model=args.model,
        metrics_url=None if args.no_metrics else args.metrics_url or f"{base}/metrics",
        check_limits=args.check_limits,
    )
    return smoke.run()


if __name__ == "__main__":
    sys.exit(main())
