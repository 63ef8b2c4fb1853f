"""The routing engine at its edges: a degraded backend that is also impaired, the X-Routing-Warning's
256-character limit exactly at its boundary, the weighted draw's float-rounding fallback, and a
backend's upstream model name carried through the draw."""

from __future__ import annotations

import random

import pytest

from router_impl.config.model import RuntimeConfig
from router_impl.errors import ApiError
from router_impl.routing.engine import MAX_WARNING_CHARS, weighted_order
from router_impl.routing.health import Availability
from tests.routing.test_engine import HALF_OPEN, OPEN, PROBE_FAILED, FakeHealth, ids, route, snapshot

SKIPPED_OPEN = " skipped (breaker open)"


def test_a_degraded_backend_whose_breaker_is_open_is_skipped_for_its_breaker() -> None:
    decision = route(snapshot({"deg": 10, "a": 10}, states={"deg": "degraded"}), FakeHealth({"deg": OPEN}))
    assert ids(decision) == ["a"]
    assert decision.skipped == (("deg", "breaker open"),)
    assert decision.warning == "deg skipped (breaker open)"


def test_a_degraded_backend_that_is_half_open_is_skipped_for_its_breaker_and_still_offered() -> None:
    config = snapshot({"deg": 10, "a": 10}, states={"deg": "degraded"})
    decision = route(config, FakeHealth({"deg": HALF_OPEN}))
    assert ids(decision) == ["a", "deg"]
    assert decision.skipped == (("deg", "breaker half-open"),)
    assert decision.warning_at(1) == "served by degraded backend deg"


def test_a_degraded_failover_only_backend_is_never_reported_skipped() -> None:
    decision = route(snapshot({"a": 10, "deg": 0}, states={"deg": "degraded"}), FakeHealth({"deg": OPEN}))
    assert (ids(decision), decision.skipped, decision.reason) == (["a"], (), "PRIMARY")


def _two_skipped(first: int, second: int) -> str | None:
    """The warning when backends with ids of these lengths are skipped and a third one serves."""
    x, y = "x" * first, "y" * second
    return route(snapshot({x: 1, y: 1, "c": 1}), FakeHealth({x: OPEN, y: OPEN})).warning


def test_a_warning_of_exactly_256_characters_is_kept_whole() -> None:
    warning = _two_skipped(104, 104)
    assert warning == f"{'x' * 104}{SKIPPED_OPEN}; {'y' * 104}{SKIPPED_OPEN}"
    assert len(warning) == MAX_WARNING_CHARS == 256


def test_a_warning_of_257_characters_is_cut_to_256_ending_in_an_ellipsis() -> None:
    warning = _two_skipped(104, 105)
    whole = f"{'x' * 104}{SKIPPED_OPEN}; {'y' * 105}{SKIPPED_OPEN}"
    assert warning == whole[:253] + "..."
    assert len(warning) == 256


def test_a_warning_names_the_skipped_backend_and_the_degraded_one_serving() -> None:
    decision = route(snapshot({"a": 10, "b": 10}, states={"b": "degraded"}), FakeHealth({"a": OPEN}))
    assert decision.warning == "a skipped (breaker open); served by degraded backend b"


class TopOfRange(random.Random):
    """Always the largest value ``random()`` can return: 1 - 2**-53."""

    def random(self) -> float:
        return 1.0 - 2.0**-53


def test_a_draw_rounded_past_the_last_bound_takes_the_last_item() -> None:
    # 0.9999999999999999 * 1.0 - 0.3 rounds to 0.7, not below it: the walk falls off the end.
    assert weighted_order(["a", "b"], [0.3, 0.7], TopOfRange()) == ["b", "a"]
    assert weighted_order(["a", "b", "c"], [1.0, 1.0, 1.0], TopOfRange()) == ["c", "b", "a"]


def test_a_draw_at_the_bottom_of_the_range_takes_the_first_weighted_item() -> None:
    class Bottom(random.Random):
        def random(self) -> float:
            return 0.0

    assert weighted_order(["a", "b", "c"], [0.0, 2.0, 1.0], Bottom()) == ["b", "c", "a"]
    assert weighted_order(["a", "b"], [-5.0, 1.0], Bottom()) == ["b", "a"]  # a negative weight is 0


def test_a_warming_up_backend_is_back_and_not_reported_skipped() -> None:
    health = FakeHealth({"a": Availability(True, 0.5, "warming_up")})
    decision = route(snapshot({"a": 10}), health)
    assert (decision.skipped, decision.warning, decision.reason) == ((), None, "PRIMARY")
    assert decision.candidates[0].weight == pytest.approx(5.0)


def test_the_refusals_say_which_model_and_why() -> None:
    with pytest.raises(ApiError) as unknown:
        route(snapshot({"a": 1}), model="gpt-9")
    assert unknown.value.message == "Unknown model 'gpt-9'."
    with pytest.raises(ApiError) as off:
        route(snapshot({"a": 1}, enabled=False))
    assert off.value.message == "Model 'llama' is switched off."
    with pytest.raises(ApiError) as down:
        route(snapshot({"a": 1, "b": 1}), FakeHealth({"a": OPEN, "b": PROBE_FAILED}))
    assert down.value.message == (
        "No backend is available for 'llama' (a: breaker open, b: health check failing)."
    )
    with pytest.raises(ApiError) as disabled:
        route(snapshot({"a": 1}, states={"a": "disabled"}))
    assert disabled.value.message == "No backend is available for 'llama' (all disabled)."


def _all_open(*lengths: int) -> tuple[str, str]:
    """(the NO_BACKEND_AVAILABLE message, the text it would be uncut) when backends with ids of
    these lengths all have their breaker open."""
    backends = [str(n) * length for n, length in enumerate(lengths, 1)]
    with pytest.raises(ApiError) as raised:
        route(snapshot(dict.fromkeys(backends, 1)), FakeHealth(dict.fromkeys(backends, OPEN)))
    detail = ", ".join(f"{b}: breaker open" for b in backends)
    return raised.value.message, f"No backend is available for 'llama' ({detail})."


def test_the_no_backend_message_is_kept_whole_up_to_500_characters_and_cut_beyond() -> None:
    message, uncut = _all_open(100, 100, 100, 99)
    assert len(uncut) == 500 and message == uncut
    message, uncut = _all_open(100, 100, 100, 100)
    assert len(uncut) == 501 and message == uncut[:497] + "..."


def test_weighted_order_needs_a_weight_for_each_item() -> None:
    with pytest.raises(ValueError):
        weighted_order(["a", "b"], [1.0], random.Random(1))


def test_an_upstream_model_name_travels_with_its_backend_whatever_the_draw() -> None:
    config = RuntimeConfig.model_validate(
        {
            "backends": [{"id": b, "base_url": f"http://{b}.internal:8000/v1"} for b in ("a", "b")],
            "models": [
                {
                    "model": "llama",
                    "backends": [
                        {"backend_id": "a", "weight": 50, "upstream_model": "a-llama-8b"},
                        {"backend_id": "b", "weight": 50},
                    ],
                }
            ],
        }
    )
    orders = set()
    for seed in range(20):
        decision = route(config, seed=seed)
        orders.add(tuple(ids(decision)))
        names = {c.backend.id: c.backend_model for c in decision.candidates}
        assert names == {"a": "a-llama-8b", "b": "llama"}  # b has no mapping and lists no models
    assert orders == {("a", "b"), ("b", "a")}
