"""Where the PromQL of this repository lives, read for tests: the Grafana dashboard (panel targets and
template-variable queries), the alert list and metric table of `docs/metrics.md`, the Helm chart's
PrometheusRule (read as text: `expr:` values, or the `$expr := printf "..."` strings the chart assembles
them from, with Helm actions and format verbs replaced by `0`) and the ```promql blocks of
`docs/runbooks.md`; and the series names a Prometheus text exposition exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.promql import PromQLError

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "api-router.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
CHART = REPO / "helm" / "api-router"
METRICS_DOC = REPO / "docs" / "metrics.md"
PROMETHEUS_RULE = REPO / "helm" / "api-router" / "templates" / "prometheusrule.yaml"


@dataclass(frozen=True)
class Expression:
    source: str  # where it was found, for failure messages
    expr: str


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


def dashboard_expressions() -> list[Expression]:
    dashboard = load_dashboard()
    found = [
        Expression(f"dashboard panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
        for panel in dashboard_panels(dashboard)
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
