"""A small PromQL tokenizer for tests: the metric names an expression selects.

Identifiers outside label matchers and ranges that are not functions, aggregations, keywords or the
label lists of `by`/`without`/`on`/`ignoring`/`group_*` are metric names; `{__name__="x"}` names `x`.
Unknown functions and unbalanced brackets raise ``PromQLError``: a typo in a dashboard fails loudly.
"""

from __future__ import annotations

import re

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
