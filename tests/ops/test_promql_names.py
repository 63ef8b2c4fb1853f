"""Every PromQL expression in the dashboard, the alert rules and the runbooks names a metric a live router
exports.

Expressions come from `deploy/grafana/api-router.json` (panel targets and template-variable queries),
the alert list in `docs/metrics.md`, `helm/api-router/templates/prometheusrule.yaml` (read as text:
`expr:` values, or the `$expr := printf "..."` strings the chart assembles them from, with Helm
actions and format verbs replaced by `0`) and the ```promql blocks of `docs/runbooks.md`. A small
PromQL tokenizer pulls out the metric names: identifiers outside label matchers and ranges that are not
functions, aggregations, keywords or the label lists of `by`/`without`/`on`/`ignoring`/`group_*`.
A router started on a config that exercises failover, a dead backend, rate limits, budgets and auth
failures is scraped, and every name must be a series it exports (by its `# TYPE` families: a counter
`x_total`, a histogram's `x_bucket`/`x_sum`/`x_count`, a gauge `x`). Names are also checked against
the table in `docs/metrics.md`, and every documented metric must be exported with its documented type.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router_impl.auth.keys import hash_secret
from tests.harness.backend import MockBackend
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.router_proc import RouterFleet, RouterProcess
from tests.harness.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "api-router.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
CHART = REPO / "helm" / "api-router"
METRICS_DOC = REPO / "docs" / "metrics.md"
PROMETHEUS_RULE = REPO / "helm" / "api-router" / "templates" / "prometheusrule.yaml"
ALERT_COUNT = 8  # error rate, latency, backend unhealthy, failover rate, buffer size/age, denials, 503

# ------------------------------------------------------------------------------------------ PromQL

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "info",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
        "start",
        "end",
    ]
)
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LIST_KEYWORDS | {"bool", "and", "or", "unless", "offset", "inf", "nan"}

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[[\w:.]+\]\])          # Grafana variables: $x, ${x}, [[x]]
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[{}\[\](),@])
  | (?P<op>[-=!<>~+*/%^]+)
  | (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


def _tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(f"unexpected {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup or ""
        if kind not in {"space", "comment"}:
            found.append((kind, match.group()))
        position = match.end()
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (raises PromQLError on unknown functions or bad nesting)."""
    tokens = _tokens(expr)
    names: set[str] = set()
    outside: list[tuple[str, str]] = []
    braces = brackets = 0
    for index, (kind, text) in enumerate(tokens):
        if text == "{" and kind == "punct":
            braces += 1
        elif text == "}" and kind == "punct":
            braces -= 1
        elif text == "[" and kind == "punct":
            brackets += 1
        elif text == "]" and kind == "punct":
            brackets -= 1
        elif braces:  # label matchers: only {__name__="x"} names a metric
            if kind == "ident" and text == "__name__" and index + 2 < len(tokens):
                op, value = tokens[index + 1][1], tokens[index + 2]
                if op == "=" and value[0] == "string":
                    names.add(value[1][1:-1])
            continue
        elif not brackets:
            outside.append((kind, text))
        if braces < 0 or brackets < 0:
            raise PromQLError(f"unbalanced brackets in {expr!r}")
    if braces or brackets:
        raise PromQLError(f"unbalanced brackets in {expr!r}")

    index = 0
    while index < len(outside):
        kind, text = outside[index]
        index += 1
        if kind != "ident":
            continue
        word = text.lower()
        followed_by_paren = index < len(outside) and outside[index][1] == "("
        if word in LABEL_LIST_KEYWORDS and followed_by_paren:
            depth = 0
            while index < len(outside):  # skip the label list: (le, backend)
                depth += {"(": 1, ")": -1}.get(outside[index][1], 0)
                index += 1
                if depth == 0:
                    break
        elif followed_by_paren:
            if word not in FUNCTIONS and word not in AGGREGATIONS:
                raise PromQLError(f"unknown PromQL function {text!r} in {expr!r}")
        elif word in KEYWORDS or word in AGGREGATIONS:
            continue  # `sum without (x) (...)` has the keyword first; bare modifiers like `bool`
        else:
            names.add(text)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(router_request_duration_seconds_bucket{route=~"$r"}'
            "[$__rate_interval])))",
            {"router_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{status=~"5..", x="}"}[5m:1m])) / ignoring(status) group_left sum(b) > bool 0',
            {"a_total", "b"},
        ),
        ("time() - max by (instance) (c_seconds offset 1h)", {"c_seconds"}),
        ('count({__name__="d_info", job="x"}) and on (job) e == 1', {"d_info", "e"}),
        ("sum without (le) (f) unless g", {"f", "g"}),
        ("max(h) - min(h)   # spread across pods", {"h"}),
    ],
)
def test_the_tokenizer_finds_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_the_tokenizer_refuses_unknown_functions() -> None:
    with pytest.raises(PromQLError, match="rat"):
        metric_names("sum(rat(x[5m]))")


# ------------------------------------------------------------------------------- expression sources


@dataclass(frozen=True)
class Expression:
    source: str  # where it was found, for failure messages
    expr: str


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


def dashboard_expressions() -> list[Expression]:
    dashboard = _dashboard()
    found = [
        Expression(f"dashboard panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text)
        selector = match["selector"] if match else text
        if selector:
            found.append(Expression(f"dashboard variable ${variable.get('name')}", selector))
    return found


def documented_alert_expressions() -> list[Expression]:
    """The `- name: `expr` for N m` lines after "Alert thresholds" in docs/metrics.md."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    section = text[text.index("Alert thresholds") :]
    found = []
    for line in section.splitlines():
        match = re.match(r"^- ([^:]+): `([^`]+)`", line)
        if match:
            found.append(Expression(f"docs/metrics.md alert {match[1]!r}", match[2]))
    return found


_HELM_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_ONLY_HELM_ACTION = re.compile(r"^\{\{.*\}\}$", re.DOTALL)
# `{{- $expr := printf "sum(rate(x{%s}[%s])) > %s" $sel $w ... }}`: the chart assembles expressions
_PRINTF_EXPR = re.compile(r"\$expr\s*:?=\s*printf\s+\"((?:\\.|[^\"\\])*)\"")
_PRINTF_VERB = re.compile(r"%[-+# 0-9.]*[a-zA-Z]")


def _go_unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text)


def rule_expressions(text: str, source: str) -> list[Expression]:
    """Alert expressions of a (Helm-templated) PrometheusRule, read as text.

    `expr:` values (plain, quoted or block scalars) with Helm actions replaced by `0`; an `expr:` that
    is only a Helm action (`expr: {{ .expr | quote }}`) is read where the chart builds it: the format
    strings of `$expr := printf "..."`, their verbs (`%s`, `%v`: selector, window, threshold) as `0`.
    """
    lines = text.splitlines()
    found: list[Expression] = []
    indirect = 0
    for number, line in enumerate(lines):
        match = re.match(r"^(?P<lead>\s*(?:-\s+)?)expr:(?P<rest>.*)$", line)
        if match is None:
            continue
        column = len(match["lead"])
        rest = match["rest"].strip()
        continuation = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= column:
                break
            continuation.append(following.strip())
        if rest[:1] in {"|", ">"}:
            body = " ".join(continuation)
        else:
            body = " ".join([rest, *continuation]).strip()
            if _ONLY_HELM_ACTION.match(body):
                indirect += 1
                continue
            if body[:1] in {'"', "'"}:
                body = yaml.safe_load(_HELM_ACTION.sub("0", body))
        expr = _HELM_ACTION.sub("0", body).strip()
        found.append(Expression(f"{source} line {number + 1}", expr))
    for match in _PRINTF_EXPR.finditer(text):
        number = text.count("\n", 0, match.start()) + 1
        expr = _PRINTF_VERB.sub("0", _go_unquote(match[1]).replace("%%", "%"))
        found.append(Expression(f"{source} line {number} (printf)", expr))
    if indirect and not any(e.source.endswith("(printf)") for e in found):
        raise PromQLError(f"{source}: `expr:` comes from a Helm action this test cannot read")
    return found


def alert_rule_expressions() -> list[Expression]:
    relative = PROMETHEUS_RULE.relative_to(REPO)
    return rule_expressions(PROMETHEUS_RULE.read_text(encoding="utf-8"), str(relative))


def runbook_expressions() -> list[Expression]:
    """Every line of the ```promql blocks in docs/runbooks.md."""
    found = []
    lines = RUNBOOKS.read_text(encoding="utf-8").splitlines()
    inside = False
    for number, line in enumerate(lines, start=1):
        if line.strip().startswith("```"):
            inside = line.strip() == "```promql"
        elif inside and line.strip():
            found.append(Expression(f"docs/runbooks.md line {number}", line.strip()))
    return found


def all_expressions() -> list[Expression]:
    return [
        *dashboard_expressions(),
        *documented_alert_expressions(),
        *alert_rule_expressions(),
        *runbook_expressions(),
    ]


def test_rule_expressions_are_read_from_helm_templates() -> None:
    template = """
spec:
  groups:
    - name: api-router
      rules:
        - alert: HighErrorRate
          expr: sum(rate(a_total{status=~"5.."}[5m])) > {{ .Values.alerts.errorRate }}
          for: 5m
        - alert: Quoted
          expr: "max(b) > 1"
        - alert: Block
          expr: |
            histogram_quantile(0.99,
              sum by (le) (rate(c_bucket[5m])))
            > {{ .Values.x }}
          labels: {severity: warning}
"""
    found = rule_expressions(template, "t")
    assert [metric_names(e.expr) for e in found] == [{"a_total"}, {"b"}, {"c_bucket"}]

    assembled = r"""
{{- $expr := printf "sum(rate(a_total{status=~\"5..\",%s}[%s])) / sum(rate(b_total{%s}[%s])) > %s" $sel $w }}
{{- $expr := printf "histogram_quantile(%v, sum by (le) (rate(c_bucket{%s}[%s]))) > 2" .quantile $sel $w }}
- alert: {{ .name }}
  expr: {{ .expr | quote }}
"""
    found = rule_expressions(assembled, "t")
    assert [metric_names(e.expr) for e in found] == [{"a_total", "b_total"}, {"c_bucket"}]
    with pytest.raises(PromQLError, match="Helm action"):
        rule_expressions("- alert: X\n  expr: {{ .Values.expr }}\n", "t")


# ----------------------------------------------------------------------------------- documented names

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> dict[str, str]:
    """name -> type from the table in docs/metrics.md."""
    found = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`(router_\w+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            found[match[1]] = match[2]
    return found


def series_names(families: dict[str, str]) -> set[str]:
    """The sample names a family of each type exposes (what a PromQL selector can name)."""
    names: set[str] = set()
    for name, kind in families.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        elif kind == "summary":
            names.update((name, name + "_sum", name + "_count"))
        else:
            names.add(name)
    return names


def test_docs_list_the_metrics_and_alerts() -> None:
    documented = documented_metrics()
    assert len(documented) >= 20, documented
    assert set(documented.values()) <= {"counter", "gauge", "histogram"}, documented
    assert all(name.endswith("_total") for name, kind in documented.items() if kind == "counter")
    assert len(documented_alert_expressions()) == ALERT_COUNT


def test_the_dashboard_has_the_spec_panels() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = [p for p in _panels(dashboard) if p.get("type") != "row"]
    ids = [p["id"] for p in _panels(dashboard)]
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
            {"id": "ops-dead", "base_url": dead_url, "models": [MODEL], "connect_timeout_ms": 200},
            {"id": "ops-ok", "base_url": f"{backend.base_url}/v1", "models": [MODEL]},
        ],
        "models": [
            {
                "model": MODEL,
                # the dead backend is the first choice; ops-ok (weight 0) is the alternate: FAILOVER
                "backends": [
                    {"backend_id": "ops-dead", "weight": 100},
                    {"backend_id": "ops-ok", "weight": 0},
                ],
                "failover_threshold": 1,
            }
        ],
        "org_limits": {
            "org-ops-limited": {"rate_limits": {"requests_per_minute": 1, "burst": 1}},
            "org-ops-broke": {"budgets": {"daily_tokens": 1}},
        },
        "api_keys": [
            {"id": key_id, "organization_id": org, "key_hash": hash_secret(secret), "scopes": ["inference"]}
            for key_id, org, secret in KEYS.values()
        ],
    }


def _traffic(client: httpx.Client) -> None:
    def chat(key: str, **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "metrics"}], **extra}
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


def parse_exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """(`# TYPE` family name -> type, sample names) of a Prometheus text exposition."""
    families: dict[str, str] = {}
    samples: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return families, samples


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
