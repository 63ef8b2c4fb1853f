"""getHealth / getReadiness: no auth, cheap (cached probes), no hosts or secrets in the body."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from router_impl.components import Components
from router_impl.process_health import Report
from router_impl.telemetry.metrics import CONTENT_TYPE
from router_impl.web.current import RequestContext
from router_impl.web.responses import json_response, timestamp

_NO_STORE = {"Cache-Control": "no-store"}


def _body(report: Report, *, readiness: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": report.status,
        "version": report.build.version,
        "commit": report.build.commit,
        "build_time": report.build.build_time,
        "checks": [
            {
                "name": c.name,
                "status": c.status,
                "details": c.details,
                "observed_at": timestamp(c.observed_at),
            }
            for c in report.checks
        ],
    }
    if readiness:
        body["ready_backends"] = len(report.ready_backends)
        body["degraded_backends"] = len(report.degraded_backends)
        body["ready_backend_ids"] = list(report.ready_backends)
        body["degraded_backend_ids"] = list(report.degraded_backends)
    return body


async def get_health(components: Components, request: RequestContext) -> Response:
    await components.probe_guard.check(request.client)
    report = await components.health.liveness()
    return json_response(_body(report, readiness=False), 200 if report.ok else 503, _NO_STORE)


async def get_readiness(components: Components, request: RequestContext) -> Response:
    await components.probe_guard.check(request.client)
    report = await components.health.readiness()
    return json_response(_body(report, readiness=True), 200 if report.ok else 503, _NO_STORE)


async def get_metrics(components: Components, request: RequestContext) -> Response:
    await components.probe_guard.check(request.client)
    return Response(components.metrics.render(), media_type=CONTENT_TYPE, headers=_NO_STORE)
