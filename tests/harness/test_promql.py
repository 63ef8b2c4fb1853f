"""The PromQL tokenizer (tests/harness/promql.py) and the reading of alert rules from Helm templates
(tests/harness/ops_expressions.py) that tests/ops/test_promql_names.py relies on."""

from __future__ import annotations

import pytest

from tests.harness.ops_expressions import rule_expressions
from tests.harness.promql import PromQLError, metric_names


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
