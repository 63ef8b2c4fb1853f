"""JSON Merge Patch: the test cases of RFC 7396, Appendix A, and the limits document it is used on."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from router_impl.config.merge_patch import merge_patch

RFC_7396_APPENDIX_A: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_APPENDIX_A)
def test_the_rfc_examples(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy((target, patch))
    assert merge_patch(target, patch) == result
    assert (target, patch) == before  # neither argument is modified


def test_a_budget_changes_and_the_other_limits_stay() -> None:
    current = {
        "rate_limits": {"requests_per_minute": 600, "burst": 100},
        "budgets": {"daily_tokens": 1000, "monthly_usd": 50.0},
        "failure_mode": "fail_closed",
    }
    patched = merge_patch(current, {"budgets": {"daily_tokens": 5000, "monthly_usd": None}})
    assert patched == {
        "rate_limits": {"requests_per_minute": 600, "burst": 100},
        "budgets": {"daily_tokens": 5000},
        "failure_mode": "fail_closed",
    }
