"""Weighted selection honours the weights: 10,000 selections with a fixed-seed RNG, checked with a
chi-square goodness-of-fit test at p > 0.001 (critical values from the chi-square table)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

import pytest

from router_impl.routing.engine import RouteRequest, RoutingEngine, plan_route, weighted_order
from router_impl.routing.health import Availability
from tests.routing.test_engine import FakeHealth, snapshot

SELECTIONS = 10_000
# Upper 0.001 quantiles of the chi-square distribution by degrees of freedom.
CHI2_CRITICAL_P001 = {1: 10.828, 2: 13.816, 3: 16.266}


def chi_square(observed: Mapping[str, int], expected_share: Mapping[str, float]) -> float:
    total = sum(observed.values())
    return sum(
        (observed.get(k, 0) - total * share) ** 2 / (total * share) for k, share in expected_share.items()
    )


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 70, "b": 30},
        {"a": 900, "b": 100},
        {"a": 60, "b": 30, "c": 10},
        {"a": 5, "b": 3, "c": 1},
    ],
    ids=["70-30", "900-100", "60-30-10", "5-3-1"],
)
@pytest.mark.parametrize("path", ["plan_route", "engine"])
def test_first_choice_follows_uneven_weights_over_ten_thousand_selections(
    weights: dict[str, int], path: str
) -> None:
    """Both the full path and the engine's cached plan (cumulative weights, a draw per request)."""
    config = snapshot(weights)
    rng = random.Random(20_240_611)
    health = FakeHealth()
    request = RouteRequest("llama", "org-1", "key-1")
    engine = RoutingEngine(health, rng)
    firsts = Counter(
        (
            plan_route(config, health, request, rng)
            if path == "plan_route"
            else engine.candidates(config, request)
        )
        .candidates[0]
        .backend.id
        for _ in range(SELECTIONS)
    )
    statistic = chi_square(firsts, shares(weights))
    assert statistic < CHI2_CRITICAL_P001[len(weights) - 1], (firsts, statistic)


def test_second_choice_is_a_weighted_draw_from_the_rest() -> None:
    """Without replacement: P(second = j) = sum over i != j of p_i * p_j / (1 - p_i)."""
    p = shares({"a": 60, "b": 30, "c": 10})
    rng = random.Random(99)
    seconds = Counter(weighted_order(list(p), list(p.values()), rng)[1] for _ in range(SELECTIONS))
    expected = {j: sum(p[i] * p[j] / (1 - p[i]) for i in p if i != j) for j in p}
    assert sum(expected.values()) == pytest.approx(1.0)
    assert chi_square(seconds, expected) < CHI2_CRITICAL_P001[2], seconds


def test_the_engines_second_choice_is_a_weighted_draw_from_the_rest() -> None:
    p = shares({"a": 60, "b": 30, "c": 10})
    engine = RoutingEngine(FakeHealth(), random.Random(7))
    config, request = snapshot({"a": 60, "b": 30, "c": 10}), RouteRequest("llama", "org-1", "key-1")
    seconds = Counter(engine.candidates(config, request).candidates[1].backend.id for _ in range(SELECTIONS))
    expected = {j: sum(p[i] * p[j] / (1 - p[i]) for i in p if i != j) for j in p}
    assert chi_square(seconds, expected) < CHI2_CRITICAL_P001[2], seconds


def test_warm_up_factor_scales_the_share_of_a_recovering_backend() -> None:
    config = snapshot({"a": 50, "b": 50})
    health = FakeHealth({"a": Availability(True, 0.25, "warming_up")})
    rng = random.Random(5)
    request = RouteRequest("llama", "org-1", "key-1")
    firsts = Counter(
        plan_route(config, health, request, rng).candidates[0].backend.id for _ in range(SELECTIONS)
    )
    assert chi_square(firsts, shares({"a": 12.5, "b": 50})) < CHI2_CRITICAL_P001[1], firsts


def test_the_check_itself_rejects_a_wrong_distribution() -> None:
    """Guard against a vacuous test: a 50/50 draw fails the 70/30 expectation."""
    rng = random.Random(1)
    fair = Counter(weighted_order(["a", "b"], [1.0, 1.0], rng)[0] for _ in range(SELECTIONS))
    assert chi_square(fair, shares({"a": 70, "b": 30})) > CHI2_CRITICAL_P001[1]
