"""`router limits patch --set path=value`: the merge patch the pairs make."""

from __future__ import annotations

import pytest

from router_impl.cli.limits import merge_patch_of


def test_dotted_paths_nest_and_values_parse_as_json_when_they_can() -> None:
    assert merge_patch_of(
        [
            "budgets.daily_tokens=5000",
            "budgets.monthly_usd=null",
            "failure_mode=fail_closed",
            "max_tokens_cap=512",
        ]
    ) == {
        "budgets": {"daily_tokens": 5000, "monthly_usd": None},
        "failure_mode": "fail_closed",
        "max_tokens_cap": 512,
    }


@pytest.mark.parametrize("bad", ["budgets.daily_tokens", "=5", "budgets..x=1"])
def test_a_pair_without_a_path_or_value_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="path=value"):
        merge_patch_of([bad])


def test_a_path_through_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="already set"):
        merge_patch_of(["budgets=1", "budgets.daily_tokens=5"])
