"""Prometheus metrics (docs/metrics.md is the list): one ``Metrics`` per process, built in app.py.

Counters and histograms are updated where things happen (the web edge, the dispatcher, the limits
service, the publisher); gauges that describe state (backlog, breakers, config) are sampled by
``refresh`` from the components, every few seconds and at each scrape.

Several workers (``router serve --workers N``) share one directory named by
``PROMETHEUS_MULTIPROC_DIR`` (set by the CLI before the workers start; prometheus-client reads it
when it is first imported): every worker writes its values there and a scrape, answered by any
worker, aggregates them. Gauges say how: ``max`` for shared state, ``min`` for "is it up".
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
AUTH_CODES = frozenset(
    {
        "AUTH_INVALID",
        "INVALID_API_KEY",
        "SIGNATURE_MISSING",
        "SIGNATURE_INVALID",
        "SIGNATURE_EXPIRED",
        "SIGNATURE_REPLAYED",
        "FORBIDDEN",
        "MODEL_NOT_ALLOWED",
    }
)


@dataclass(frozen=True)
class BackendSample:
    backend_id: str
    up: bool
    breaker: str  # closed | half_open | open


@dataclass(frozen=True)
class Sample:
    """What ``refresh`` reads from the components."""

    backends: tuple[BackendSample, ...] = ()
    outbox_records: int = 0
    outbox_bytes: int = 0
    outbox_oldest_age_seconds: float = 0.0
    config_revision: int = 0
    config_applied_at: float = 0.0
    config_rejected: int = 0
    limits_store_up: bool = True


class RouteNames:
    """Maps a request path to its route template, so labels stay few (unknown paths: ``unmatched``)."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template in sorted(set(templates)):
            if "{" in template:
                pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                self._patterns.append((re.compile(f"^{pattern}$"), template))
            else:
                self._exact[template] = template

    def __call__(self, path: str) -> str:
        found = self._exact.get(path)
        if found is not None:
            return found
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return "unmatched"


class Metrics:
    def __init__(self, *, version: str = "unknown", commit: str = "unknown") -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "Request latency.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_requests = Counter(
            "router_backend_requests", "Backend calls by outcome.", ["backend", "outcome"], registry=r
        )
        self.backend_duration = Histogram(
            "router_backend_request_duration_seconds",
            "One backend call, until its answer or first streamed byte.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_up = Gauge(
            "router_backend_up",
            "1 when the backend is serviceable.",
            ["backend"],
            registry=r,
            multiprocess_mode="min",
        )
        self.breaker_state = Gauge(
            "router_breaker_state",
            "0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=r,
            multiprocess_mode="max",
        )
        self.breaker_opened = Counter(
            "router_breaker_opened", "Times a backend's circuit breaker opened.", ["backend"], registry=r
        )
        self.decisions = Counter(
            "router_routing_decisions",
            "Served requests by routing decision.",
            ["model", "decision"],
            registry=r,
        )
        self.failovers = Counter(
            "router_failovers",
            "Requests served by another backend than the first choice.",
            ["model"],
            registry=r,
        )
        self.rate_limit_denials = Counter(
            "router_rate_limit_denials", "Requests refused by a rate limit (429).", ["scope"], registry=r
        )
        self.budget_denials = Counter(
            "router_budget_denials", "Requests refused by a budget (402).", ["period"], registry=r
        )
        self.limits_store_up = Gauge(
            "router_limits_store_up",
            "1 while the shared limit store answers.",
            registry=r,
            multiprocess_mode="min",
        )
        self.auth_failures = Counter(
            "router_auth_failures",
            "Authentication and authorisation failures by code.",
            ["reason"],
            registry=r,
        )
        self.outbox_records = Gauge(
            "router_usage_outbox_records",
            "Records waiting in the usage outbox.",
            registry=r,
            multiprocess_mode="max",
        )
        self.outbox_bytes = Gauge(
            "router_usage_outbox_bytes",
            "Bytes waiting in the usage outbox.",
            registry=r,
            multiprocess_mode="max",
        )
        self.outbox_oldest_age = Gauge(
            "router_usage_outbox_oldest_age_seconds",
            "Age of the oldest waiting record.",
            registry=r,
            multiprocess_mode="max",
        )
        self.published = Counter(
            "router_usage_published", "Records confirmed delivered, by topic.", ["topic"], registry=r
        )
        self.publish_failures = Counter(
            "router_usage_publish_failures", "Records whose delivery failed (retried).", ["topic"], registry=r
        )
        self.config_revision = Gauge(
            "router_config_revision",
            "Revision of the applied runtime config.",
            registry=r,
            multiprocess_mode="max",
        )
        self.config_applied_at = Gauge(
            "router_config_last_apply_timestamp_seconds",
            "When the runtime config was last applied (Unix time).",
            registry=r,
            multiprocess_mode="max",
        )
        self.config_rejected = Counter(
            "router_config_rejected", "Invalid config snapshots or objects rejected.", registry=r
        )
        # Tasks only pile up when something never finishes (a hung call, a leaked watcher): the
        # figure a leak shows first. Sampled with the other state gauges, from inside the loop.
        self.event_loop_tasks = Gauge(
            "router_event_loop_tasks",
            "asyncio tasks alive in the event loop.",
            registry=r,
            multiprocess_mode="livesum",
        )
        build = Gauge(
            "router_build_info",
            "Build of this router (always 1).",
            ["version", "commit"],
            registry=r,
            multiprocess_mode="max",
        )
        build.labels(version=version, commit=commit).set(1)
        self._sources: list[Callable[[], Sample]] = []
        self._rejected_seen = 0
        self._backends_seen: set[str] = set()
        self.limits_store_up.set(1)

    # ------------------------------------------------------------------ sampled state

    def sample_from(self, source: Callable[[], Sample]) -> None:
        self._sources.append(source)

    def refresh(self) -> None:
        for source in self._sources:
            self._apply(source())
        self._count_tasks()

    def _count_tasks(self) -> None:
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no running loop (a unit test); a scrape always runs in one
            return
        self.event_loop_tasks.set(len(tasks))

    def _apply(self, sample: Sample) -> None:
        current = set()
        for backend in sample.backends:
            current.add(backend.backend_id)
            self.backend_up.labels(backend=backend.backend_id).set(1 if backend.up else 0)
            self.breaker_state.labels(backend=backend.backend_id).set(_BREAKER_VALUES.get(backend.breaker, 2))
        for gone in self._backends_seen - current:  # a removed backend is not "down"
            self.backend_up.remove(gone)
            self.breaker_state.remove(gone)
        self._backends_seen = current
        self.outbox_records.set(sample.outbox_records)
        self.outbox_bytes.set(sample.outbox_bytes)
        self.outbox_oldest_age.set(sample.outbox_oldest_age_seconds)
        self.config_revision.set(sample.config_revision)
        self.config_applied_at.set(sample.config_applied_at)
        if sample.config_rejected > self._rejected_seen:
            self.config_rejected.inc(sample.config_rejected - self._rejected_seen)
        self._rejected_seen = max(self._rejected_seen, sample.config_rejected)
        self.limits_store_up.set(1 if sample.limits_store_up else 0)

    # ------------------------------------------------------------------ events

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, error_code: str | None
    ) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)
        if error_code in AUTH_CODES:
            self.auth_failures.labels(reason=error_code).inc()

    def observe_backend(self, backend_id: str, outcome: str, seconds: float) -> None:
        self.backend_requests.labels(backend=backend_id, outcome=outcome).inc()
        self.backend_duration.labels(backend=backend_id).observe(seconds)

    def observe_decision(self, model: str, decision: str, failed_over: bool) -> None:
        self.decisions.labels(model=model, decision=decision).inc()
        if failed_over:
            self.failovers.labels(model=model).inc()

    def observe_denial(self, limit_state: str, scope: str, period: str | None) -> None:
        if limit_state == "RATE_LIMITED":
            self.rate_limit_denials.labels(scope=scope).inc()
        else:
            self.budget_denials.labels(period=period or "DAILY").inc()

    def observe_published(self, topic: str, delivered: int, failed: int) -> None:
        if delivered:
            self.published.labels(topic=topic).inc(delivered)
        if failed:
            self.publish_failures.labels(topic=topic).inc(failed)

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The scrape body: this process's registry, or every worker's values in multiprocess mode."""
        self.refresh()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
