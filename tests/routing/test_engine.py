"""The routing engine's decisions, story by story: weights, overrides, access lists, kill switch,
degraded backends, breakers and the decision reported."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from router_impl.config.model import RuntimeConfig
from router_impl.errors import ApiError
from router_impl.routing.engine import RouteRequest, RoutingEngine, plan_route, weighted_order
from router_impl.routing.health import Availability, BackendHealth

OPEN = Availability(False, 0.0, "breaker_open")
PROBE_FAILED = Availability(False, 0.0, "probe_failed")
HALF_OPEN = Availability(True, 0.05, "half_open")


class FakeHealth:
    def __init__(self, states: Mapping[str, Availability] | None = None) -> None:
        self.states = dict(states or {})
        self.asked: list[tuple[str, float]] = []

    def availability(self, backend_id: str, warmup_seconds: float) -> Availability:
        self.asked.append((backend_id, warmup_seconds))
        return self.states.get(backend_id, Availability(True))


def snapshot(
    weights: Mapping[str, int],
    *,
    states: Mapping[str, str] | None = None,
    models: Mapping[str, tuple[str, ...]] | None = None,
    **policy: Any,
) -> RuntimeConfig:
    return RuntimeConfig.model_validate(
        {
            "backends": [
                {
                    "id": b,
                    "base_url": f"http://{b}.internal:8000/v1",
                    "models": list((models or {}).get(b, ())),
                }
                for b in sorted({*weights, *_override_ids(policy)})
            ],
            "models": [
                {
                    "model": "llama",
                    "aliases": ["llama-latest"],
                    "backends": [{"backend_id": b, "weight": w} for b, w in weights.items()],
                    **policy,
                }
            ],
            "backend_states": {b: {"state": s} for b, s in (states or {}).items()},
        }
    )


def _override_ids(policy: Mapping[str, Any]) -> set[str]:
    overrides = policy.get("org_overrides", {})
    return {wb["backend_id"] for o in overrides.values() for wb in o["backends"]}


def route(
    config: RuntimeConfig,
    health: FakeHealth | None = None,
    *,
    org: str = "org-1",
    key: str = "key-1",
    model: str = "llama",
    seed: int = 7,
) -> Any:
    return plan_route(config, health or FakeHealth(), RouteRequest(model, org, key), random.Random(seed))


def ids(decision: Any) -> list[str]:
    return [c.backend.id for c in decision.candidates]


def test_all_healthy_backends_are_candidates_and_the_choice_is_primary() -> None:
    decision = route(snapshot({"a": 50, "b": 50}))
    assert sorted(ids(decision)) == ["a", "b"]
    assert decision.reason == "PRIMARY"
    assert decision.warning is None
    assert decision.policy.model == "llama"


def test_an_alias_resolves_to_its_policy() -> None:
    assert route(snapshot({"a": 1}), model="llama-latest").policy.model == "llama"


def test_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1}), model="gpt-9")
    assert raised.value.code == "MODEL_NOT_FOUND"


def test_switched_off_model_has_no_backend() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1}, enabled=False))
    assert raised.value.code == "NO_BACKEND_AVAILABLE"
    assert raised.value.status_code == 503


def test_weight_zero_backend_is_never_chosen_first_while_a_weighted_one_is_usable() -> None:
    config = snapshot({"standby": 0, "a": 1, "b": 1})
    for seed in range(300):
        order = ids(route(config, seed=seed))
        assert order[-1] == "standby"
        assert order[0] != "standby"


def test_weight_zero_backend_serves_as_failover_when_the_weighted_ones_are_out() -> None:
    decision = route(snapshot({"a": 10, "standby": 0}), FakeHealth({"a": OPEN}))
    assert ids(decision) == ["standby"]
    assert decision.reason == "FAILOVER"
    assert decision.warning == "a skipped (breaker open)"


def test_org_override_replaces_the_backend_list_and_is_reported_override() -> None:
    config = snapshot(
        {"a": 100},
        org_overrides={"org-vip": {"backends": [{"backend_id": "dedicated", "weight": 1}]}},
    )
    vip = route(config, org="org-vip")
    assert ids(vip) == ["dedicated"]
    assert vip.reason == "OVERRIDE"
    other = route(config, org="org-2")
    assert ids(other) == ["a"]
    assert other.reason == "PRIMARY"


def test_override_with_an_impaired_backend_reports_failover() -> None:
    config = snapshot(
        {"a": 100},
        org_overrides={
            "org-vip": {"backends": [{"backend_id": "d1", "weight": 5}, {"backend_id": "d2", "weight": 5}]}
        },
    )
    decision = route(config, FakeHealth({"d1": OPEN}), org="org-vip")
    assert ids(decision) == ["d2"]
    assert decision.reason == "FAILOVER"


def test_denied_key_is_forbidden_with_a_clear_message() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1}, deny_keys=["key-bad"]), key="key-bad")
    assert raised.value.code == "FORBIDDEN"
    assert raised.value.status_code == 403
    assert raised.value.message == "This API key is denied access to the model 'llama'."


def test_deny_beats_allow() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1}, allow_keys=["key-1"], deny_keys=["key-1"]), key="key-1")
    assert raised.value.code == "FORBIDDEN"


def test_allow_list_admits_only_its_keys() -> None:
    config = snapshot({"a": 1}, allow_keys=["key-ok"])
    assert ids(route(config, key="key-ok")) == ["a"]
    with pytest.raises(ApiError) as raised:
        route(config, key="key-other")
    assert raised.value.code == "FORBIDDEN"
    assert "allow list" in raised.value.message
    with pytest.raises(ApiError):
        route(snapshot({"a": 1}, allow_keys=[]), key="key-ok")  # an empty allow list admits nobody


def test_disabled_backend_is_never_selected_even_as_a_last_resort() -> None:
    config = snapshot({"a": 10, "b": 0}, states={"a": "disabled"})
    decision = route(config)
    assert ids(decision) == ["b"]
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 10}, states={"a": "disabled"}))
    assert raised.value.code == "NO_BACKEND_AVAILABLE"
    with pytest.raises(ApiError):
        route(snapshot({"a": 10, "b": 5}, states={"a": "disabled"}), FakeHealth({"b": OPEN}))


def test_disabling_a_backend_is_not_a_failover() -> None:
    decision = route(snapshot({"a": 10, "b": 10}, states={"a": "disabled"}))
    assert ids(decision) == ["b"]
    assert decision.reason == "PRIMARY"
    assert decision.warning is None


def test_degraded_backend_comes_after_every_healthy_one() -> None:
    config = snapshot({"deg": 1000, "a": 1, "standby": 0}, states={"deg": "degraded"})
    for seed in range(50):
        decision = route(config, seed=seed)
        assert ids(decision) == ["a", "standby", "deg"]
        assert decision.reason == "FAILOVER"
        assert decision.warning == "deg skipped (degraded)"
        assert decision.candidates[2].degraded


def test_degraded_backend_serves_when_no_healthy_one_is_left_with_a_warning() -> None:
    config = snapshot({"deg": 10, "a": 10}, states={"deg": "degraded"})
    decision = route(config, FakeHealth({"a": PROBE_FAILED}))
    assert ids(decision) == ["deg"]
    assert decision.reason == "FAILOVER"
    assert decision.warning == "a skipped (health check failing); served by degraded backend deg"


def test_open_and_probe_failing_backends_are_left_out() -> None:
    decision = route(snapshot({"a": 1, "b": 1, "c": 1}), FakeHealth({"a": OPEN, "b": PROBE_FAILED}))
    assert ids(decision) == ["c"]
    assert decision.reason == "FAILOVER"
    assert decision.skipped == (("a", "breaker open"), ("b", "health check failing"))


def test_every_backend_open_is_no_backend_available_naming_why() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1, "b": 1}), FakeHealth({"a": OPEN, "b": PROBE_FAILED}))
    assert raised.value.code == "NO_BACKEND_AVAILABLE"
    assert "a: breaker open" in raised.value.message
    assert "b: health check failing" in raised.value.message


def test_half_open_backend_is_offered_for_its_trial_when_it_is_all_there_is() -> None:
    decision = route(snapshot({"a": 10}), FakeHealth({"a": HALF_OPEN}))
    assert ids(decision) == ["a"]
    assert decision.candidates[0].weight == pytest.approx(0.5)
    assert decision.reason == "FAILOVER"  # not the normal, fully available set
    assert decision.warning is None  # the backend serving is the one noted: nothing to warn about


def test_half_open_backend_gets_only_a_trickle_next_to_a_healthy_one() -> None:
    config = snapshot({"a": 100, "b": 100})
    health = FakeHealth({"a": HALF_OPEN})
    firsts = [ids(route(config, health, seed=seed))[0] for seed in range(2000)]
    share = firsts.count("a") / len(firsts)
    assert 0.02 < share < 0.09  # 5 / 105 ~ 4.8 %


def test_warming_up_backend_keeps_primary_at_a_reduced_weight() -> None:
    health = FakeHealth({"a": Availability(True, 0.25, "warming_up")})
    decision = route(snapshot({"a": 100, "b": 100}, warmup_seconds=45), health)
    assert decision.reason == "PRIMARY"
    assert {c.backend.id: c.weight for c in decision.candidates} == {"a": 25.0, "b": 100.0}
    assert ("a", 45) in health.asked  # the policy's warm-up window is passed through


def test_backend_model_is_the_policy_model_unless_the_backend_lists_others() -> None:
    config = snapshot(
        {"plain": 1, "lists-it": 1, "renames": 1},
        models={"lists-it": ("x", "llama"), "renames": ("meta/llama-3",)},
    )
    sent = {c.backend.id: c.backend_model for c in route(config).candidates}
    assert sent == {"plain": "llama", "lists-it": "llama", "renames": "meta/llama-3"}


def test_a_backend_listed_twice_appears_once() -> None:
    config = RuntimeConfig.model_validate(
        {
            "backends": [{"id": "a", "base_url": "http://a:1/v1"}],
            "models": [{"model": "m", "backends": [{"backend_id": "a", "weight": 1}] * 2}],
        }
    )
    decision = plan_route(config, FakeHealth(), RouteRequest("m", "o", "k"), random.Random(1))
    assert ids(decision) == ["a"]


def test_reason_and_warning_for_a_later_candidate() -> None:
    decision = route(snapshot({"a": 1, "deg": 1}, states={"deg": "degraded"}))
    assert decision.reason_at(0) == "FAILOVER"
    assert decision.reason_at(1) == "FAILOVER"
    healthy = route(snapshot({"a": 1, "b": 1}))
    assert healthy.reason_at(0) == "PRIMARY"
    assert healthy.reason_at(1) == "FAILOVER"
    assert healthy.warning_at(1) is None
    assert decision.warning_at(1) == "served by degraded backend deg"


def test_warning_is_printable_ascii_within_256_characters() -> None:
    many = {f"backend-with-a-rather-long-identifier-{n:03d}": 1 for n in range(20)}
    health = FakeHealth({b: OPEN for b in list(many)[:-1]})
    warning = route(snapshot(many), health).warning
    assert warning is not None
    assert len(warning) <= 256
    assert warning.endswith("...")
    assert all(" " <= c <= "~" for c in warning)


def test_engine_uses_its_bound_health_registry_and_rng() -> None:
    health = BackendHealth(lambda: 0.0)
    for _ in range(3):
        health.record_failure("a", 3)
    engine = RoutingEngine(health, random.Random(3))
    decision = engine.candidates(snapshot({"a": 1, "b": 1}), RouteRequest("llama", "o", "k"))
    assert ids(decision) == ["b"]
    assert decision.reason == "FAILOVER"


def test_weighted_order_keeps_configuration_order_when_nothing_weighs() -> None:
    assert weighted_order(["x", "y"], [0.0, 0.0], random.Random(1)) == ["x", "y"]
    assert weighted_order([], [], random.Random(1)) == []


def test_a_view_without_a_reason_is_reported_unavailable() -> None:
    with pytest.raises(ApiError) as raised:
        route(snapshot({"a": 1}), FakeHealth({"a": Availability(False)}))
    assert "a: unavailable" in raised.value.message


def test_traffic_shifts_after_consecutive_failures_and_returns_gradually_after_recovery() -> None:
    """US-3 end to end on the pure core: breaker, half-open trial, warm-up, decision reasons."""
    now = [0.0]
    health = BackendHealth(lambda: now[0], cool_down_s=10.0)
    config = snapshot({"a": 50, "b": 50}, failover_threshold=2, warmup_seconds=100)
    engine = RoutingEngine(health, random.Random(11))
    request = RouteRequest("llama", "org-1", "key-1")

    health.record_failure("a", 2)
    assert sorted(ids(engine.candidates(config, request))) == ["a", "b"]
    health.record_failure("a", 2)
    shifted = engine.candidates(config, request)
    assert (ids(shifted), shifted.reason) == (["b"], "FAILOVER")

    now[0] = 10.0  # cool-down over: half-open, offered for one trial at the floor weight
    trial = engine.candidates(config, request)
    assert {c.backend.id: c.weight for c in trial.candidates} == {"a": pytest.approx(2.5), "b": 50.0}
    assert health.try_acquire("a")
    assert ids(engine.candidates(config, request)) == ["b"]  # the trial is taken
    health.record_success("a")

    now[0] = 60.0  # half-way through the warm-up
    warming = engine.candidates(config, request)
    assert warming.reason == "PRIMARY"
    assert {c.backend.id: c.weight for c in warming.candidates} == {"a": pytest.approx(25.0), "b": 50.0}
    now[0] = 110.0
    assert {c.weight for c in engine.candidates(config, request).candidates} == {50.0}
