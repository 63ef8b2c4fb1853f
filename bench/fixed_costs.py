#!/usr/bin/env python3
"""Per-request fixed costs measured in process: CPU microseconds of each piece a request pays for
whatever it asks (issue 20, lever 5). Each piece runs N times on its own; CPU time, best of 5.

    .venv/bin/python bench/fixed_costs.py [--n 20000]
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python bench/fixed_costs.py   # multiprocess metrics
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from router_impl.config.model import RuntimeConfig
from router_impl.ids import random_uuid4, uuid_for
from router_impl.routing.engine import RouteRequest, RoutingEngine, plan_route
from router_impl.routing.health import BackendHealth
from router_impl.telemetry.metrics import Metrics
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.audit import AuditEvent, _iso, audit_record_json
from router_impl.usage.record import Usage, UsageFacts, build_record


def cpu_us(action: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            action()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def pieces() -> dict[str, Callable[[], object]]:
    metrics = Metrics()
    tracing = Tracing(enabled=True, sample_ratio=0.0, exporter=_NullExporter())
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
        processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
    )
    log = structlog.get_logger("bench")
    now = datetime.now(UTC)
    facts = UsageFacts(
        request_id=str(uuid.uuid4()),
        organization_id="org-demo",
        api_key_id="key-demo",
        model="demo",
        backend_id="demo-upstream",
        usage=Usage(12, 34),
        latency_ms=3,
        cost_micro_usd=120,
        decision_reason="PRIMARY",
        endpoint="/v1/chat/completions",
        status_code=200,
        stream=False,
        trace_id="0" * 31 + "1",
        span_id="0" * 15 + "1",
        timestamp=now,
    )
    event = AuditEvent(
        request_id=facts.request_id,
        organization_id="org-demo",
        api_key_id="key-demo",
        action="REQUEST_ALLOWED",
        decision_reason="PRIMARY",
        timestamp=now,
        routing_backend_id="demo-upstream",
        trace_id=facts.trace_id,
        received_at=now,
        completed_at=now,
    )
    config = RuntimeConfig.model_validate(
        {
            "backends": [{"id": f"b{n}", "base_url": f"http://b{n}:8000/v1"} for n in range(3)],
            "models": [{"model": "m", "backends": [{"backend_id": f"b{n}", "weight": 10} for n in range(3)]}],
        }
    )
    health, rng, request = BackendHealth(), random.Random(1), RouteRequest("m", "org", "key")
    engine = RoutingEngine(health, rng)

    def unsampled_request() -> None:
        ingress = tracing.ingress("0" * 31 + "1", None, 0, {"http.route": "/v1/chat/completions"})
        for _ in range(4):  # the pipeline's stage spans: a look-up each when unsampled
            with tracing.span("stage"):
                pass
        if ingress is not None:
            ingress.end(200, {})

    return {
        "prometheus: request + backend + decision observations": lambda: (
            metrics.observe_request("/v1/chat/completions", "POST", 200, 0.003, None),
            metrics.observe_backend("demo-upstream", "success", 0.002),
            metrics.observe_decision("demo", "PRIMARY", False),
        ),
        "tracing: unsampled ingress span + 4 stage look-ups": unsampled_request,
        "structlog: one event filtered out (debug at info)": lambda: log.debug("x", a=1, b="two"),
        "structlog: one event rendered (JSON, ISO time)": lambda: log.info("x", a=1, b="two"),
        "datetime: now(UTC)": lambda: datetime.now(UTC),
        "datetime: ISO format (audit _iso)": lambda: _iso(now),
        "uuid: uuid4() (os.urandom)": uuid.uuid4,
        "uuid: random_uuid4() (ids.py, PRNG)": random_uuid4,
        "uuid: str(uuid4())": lambda: str(uuid.uuid4()),
        "uuid: uuid5 of a non-UUID id (ids.uuid_for)": lambda: uuid_for("key-demo"),
        "usage record: build + validate + JSON": lambda: build_record(facts).model_dump_json(
            exclude_none=True
        ),
        "audit event: build + validate + JSON": lambda: audit_record_json(event),
        "routing: plan_route, 3 backends": lambda: plan_route(config, health, request, rng),
        "routing: RoutingEngine.candidates, 3 backends (cached plan)": lambda: engine.candidates(
            config, request
        ),
    }


class _NullExporter:
    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "one process"
    print(f"| piece ({Path(__file__).name}, metrics: {mode}) | CPU µs |\n|---|---|")
    for name, action in pieces().items():
        print(f"| {name} | {cpu_us(action, args.n):.1f} |")


if __name__ == "__main__":
    main()
