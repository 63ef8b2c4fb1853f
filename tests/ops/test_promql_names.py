"""Every PromQL expression in the dashboard, the alert rules and the runbooks names a metric a live router
exports.

Expressions come from `deploy/grafana/api-router.json`, the alert list in `docs/metrics.md`,
`helm/api-router/templates/prometheusrule.yaml` and the ```promql blocks of `docs/runbooks.md`
(read by tests/harness/ops_expressions.py); the PromQL tokenizer of tests/harness/promql.py pulls out
the metric names. A router started on a config that exercises failover, a dead backend, rate limits,
budgets and auth failures is scraped, and every name must be a series it exports (by its `# TYPE`
families: a counter `x_total`, a histogram's `x_bucket`/`x_sum`/`x_count`, a gauge `x`). Names are
also checked against the table in `docs/metrics.md`, and every documented metric must be exported with
its documented type.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, failover_model, key_record
from tests.harness.ops_expressions import (
    CHART,
    REPO,
    RUNBOOKS,
    alert_rule_expressions,
    all_expressions,
    dashboard_panels,
    documented_alert_expressions,
    documented_metrics,
    load_dashboard,
    parse_exposition,
    series_names,
)
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.promql import metric_names
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until

ALERT_COUNT = 8  # error rate, latency, backend unhealthy, failover rate, buffer size/age, denials, 503


def test_docs_list_the_metrics_and_alerts() -> None:
    documented = documented_metrics()
    assert len(documented) >= 20, documented
    assert set(documented.values()) <= {"counter", "gauge", "histogram"}, documented
    assert all(name.endswith("_total") for name, kind in documented.items() if kind == "counter")
    assert len(documented_alert_expressions()) == ALERT_COUNT


def test_the_dashboard_has_the_spec_panels() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = [p for p in dashboard_panels(dashboard) if p.get("type") != "row"]
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has an empty target"
            assert target.get("datasource", {}).get("uid") == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel.get("gridPos", {})), panel["title"]

    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    names = {title: metric_names(text) for title, text in exprs.items()}
    # SPEC.md's panels (and the brief's request latency and breaker state), by the metric each shows.
    required = {
        "request rate": "router_requests_total",
        "request latency": "router_request_duration_seconds_bucket",
        "backend latency": "router_backend_request_duration_seconds_bucket",
        "error rate by backend": "router_backend_requests_total",
        "backend health": "router_backend_up",
        "breaker state": "router_breaker_state",
        "routing decisions": "router_routing_decisions_total",
        "usage records published": "router_usage_published_total",
        "buffer size": "router_usage_outbox_records",
        "rate-limit denials": "router_rate_limit_denials_total",
        "budget denials": "router_budget_denials_total",
        "oldest buffered record age": "router_usage_outbox_oldest_age_seconds",
        "failover events": "router_failovers_total",
    }
    for topic, metric in required.items():
        showing = [t for t, found in names.items() if metric in found and topic in t.lower()]
        assert showing, f"no panel titled like {topic!r} shows {metric}"

    backend_latency = next(text for title, text in exprs.items() if "backend latency" in title.lower())
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}" in backend_latency
    assert "p99" in next(t for t in exprs if t.lower().startswith("request latency"))
    assert "by (backend)" in next(
        text for title, text in exprs.items() if "error rate by backend" in title.lower()
    )


def test_every_expression_names_a_documented_metric() -> None:
    documented = series_names(documented_metrics())
    expressions = all_expressions()
    assert len(expressions) >= 30
    problems = []
    for item in expressions:
        names = metric_names(item.expr)
        if not names:
            problems.append(f"{item.source}: names no metric: {item.expr}")
        problems.extend(
            f"{item.source}: {name} is not in docs/metrics.md" for name in sorted(names - documented)
        )
    assert not problems, "\n".join(problems)


def test_the_alert_rules_cover_the_documented_alerts() -> None:
    rules = alert_rule_expressions()
    assert len(rules) >= ALERT_COUNT, [r.expr for r in rules]
    rule_names = [metric_names(r.expr) for r in rules]
    for documented in documented_alert_expressions():
        wanted = metric_names(documented.expr)
        assert any(wanted == found for found in rule_names), (
            f"no alert rule uses exactly {sorted(wanted)} ({documented.source})"
        )


RUNBOOK_SECTIONS = (
    "Startup and shutdown",
    "Reading health",
    "Backend degradation",
    "Policy update and rollback",
    "Failover recovery",
    "Outbox backlog recovery",
    "Kafka outage",
    "etcd outage",
    "Redis outage",
)


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_runbook_anchors_resolve() -> None:
    """The alerts' `runbookAnchor`s, the chart's NOTES and the runbooks' own links name real sections."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert set(RUNBOOK_SECTIONS) <= set(headings)
    anchors = {_github_anchor(h) for h in headings}
    wanted = {f"#{a}": "docs/runbooks.md" for a in re.findall(r"\]\(#([\w-]+)\)", text)}
    for path in (
        CHART / "values.yaml",
        *sorted(CHART.glob("values-*.yaml")),
        CHART / "templates" / "NOTES.txt",
    ):
        if path.exists():
            content = path.read_text(encoding="utf-8")
            for anchor in re.findall(r"runbookAnchor:\s*[\"']?([\w-]+)", content):
                wanted[f"#{anchor}"] = str(path.relative_to(REPO))
            for anchor in re.findall(r"runbooks\.md#([\w-]+)", content):
                wanted[f"#{anchor}"] = str(path.relative_to(REPO))
    assert any(source.endswith("values.yaml") for source in wanted.values()), "no runbookAnchor in the chart"
    missing = [f"{anchor} (from {source})" for anchor, source in wanted.items() if anchor[1:] not in anchors]
    assert not missing, f"no such section in docs/runbooks.md: {missing}"


# ------------------------------------------------------------------------------------- live router

MODEL = "ops-model"
KEYS = {
    "user": ("key-ops-user", "org-ops", "rk_ops_user_secret"),
    "limited": ("key-ops-limited", "org-ops-limited", "rk_ops_limited_secret"),
    "broke": ("key-ops-broke", "org-ops-broke", "rk_ops_broke_secret"),
}


def _runtime_config(backend: MockBackend) -> dict[str, Any]:
    dead_url = f"http://{LOOPBACK}:{free_port()}/v1"  # nothing listens: connect errors, an open breaker
    return {
        "backends": [
            backend_doc("ops-dead", dead_url, MODEL, connect_timeout_ms=200),
            backend_doc("ops-ok", f"{backend.base_url}/v1", MODEL),
        ],
        # the dead backend is the first choice; ops-ok (weight 0) is the alternate: FAILOVER
        "models": [failover_model(MODEL, "ops-dead", "ops-ok", failover_threshold=1)],
        "org_limits": {
            "org-ops-limited": {"rate_limits": {"requests_per_minute": 1, "burst": 1}},
            "org-ops-broke": {"budgets": {"daily_tokens": 1}},
        },
        "api_keys": [key_record(key_id, org, secret) for key_id, org, secret in KEYS.values()],
    }


def _traffic(client: httpx.Client) -> None:
    def chat(key: str, **extra: Any) -> httpx.Response:
        body = chat_body(MODEL, "metrics", **extra)
        return client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

    user, limited, broke = (KEYS[name][2] for name in ("user", "limited", "broke"))
    for _ in range(3):
        chat(user)
    chat(user, stream=True)
    client.post(
        "/v1/inference",
        json={"request_id": str(uuid.uuid4()), "model": MODEL, "payload": "metrics"},
        headers={"X-API-Key": user},
    )
    client.post("/v1/inference", json={"model": MODEL}, headers={"X-API-Key": user})  # 400
    client.get("/v1/models", headers={"X-API-Key": "rk_not_a_key_at_all"})  # 401
    for _ in range(3):
        chat(limited)  # 200, then 429
    chat(broke)  # 402
    client.get("/v1/status/readyz")


@dataclass(frozen=True)
class Scrape:
    status: int
    text: str
    families: dict[str, str]
    samples: set[str]

    @property
    def exported(self) -> set[str]:
        return series_names(self.families) | {s for s in self.samples if not s.endswith("_created")}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """One router (module-scoped, the machinery of `router_factory`) after traffic, scraped."""
    workdir = tmp_path_factory.mktemp("ops-metrics")
    fleet = RouterFleet(workdir / "routers")
    with MockBackend(models=(MODEL,)) as backend:
        config = workdir / "router.yaml"
        config.write_text(yaml.safe_dump(_runtime_config(backend)), encoding="utf-8")
        try:
            router: RouterProcess = fleet.start(env={"ROUTER_CONFIG_PATH": str(config)})
            with httpx.Client(base_url=router.base_url, timeout=10, trust_env=False) as client:
                _traffic(client)

                def published() -> Scrape | None:
                    response = client.get("/metrics")
                    families, samples = parse_exposition(response.text)
                    scraped = Scrape(response.status_code, response.text, families, samples)
                    # Usage records are published in the background; a failing scrape is reported as is.
                    done = response.status_code != 200 or "router_usage_published_total" in samples
                    return scraped if done else None

                scraped = wait_until(published, timeout=5, interval=0.2, what="router_usage_published_total")
            yield scraped
        finally:
            fleet.close()


def test_metrics_endpoint_answers(scrape: Scrape) -> None:
    assert scrape.status == 200, f"GET /metrics answered {scrape.status}: {scrape.text[:300]}"
    assert scrape.families, "GET /metrics has no # TYPE lines"


def test_every_expression_names_an_exported_metric(scrape: Scrape) -> None:
    assert scrape.status == 200, f"GET /metrics answered {scrape.status}"
    exported = scrape.exported
    missing = [
        f"{item.source}: {name} is not exported ({item.expr})"
        for item in all_expressions()
        for name in sorted(metric_names(item.expr) - exported)
    ]
    assert not missing, "\n".join(missing)


def test_documented_metrics_are_exported_with_their_type(scrape: Scrape) -> None:
    assert scrape.status == 200, f"GET /metrics answered {scrape.status}"
    problems = []
    for name, kind in documented_metrics().items():
        found = scrape.families.get(name)
        if found is None:
            problems.append(f"{name} ({kind}) has no # TYPE line")
        elif found != kind:
            problems.append(f"{name} is exported as {found}, documented as {kind}")
    assert not problems, "\n".join(problems)
