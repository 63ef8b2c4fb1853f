"""Properties of the candidate list for any snapshot and health state (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from router_impl.config.model import RuntimeConfig
from router_impl.errors import ApiError
from router_impl.routing.engine import RouteDecision, RouteRequest, RoutingEngine, plan_route
from router_impl.routing.health import Availability
from tests.routing.test_engine import FakeHealth

AVAILABILITIES = [  # fully available twice as often, so most draws have something to route to
    Availability(True),
    Availability(True),
    Availability(True, 0.3, "warming_up"),
    Availability(True, 0.05, "half_open"),
    Availability(False, 0.0, "trial_in_flight"),
    Availability(False, 0.0, "breaker_open"),
    Availability(False, 0.0, "probe_failed"),
]


@dataclass(frozen=True)
class World:
    config: RuntimeConfig
    health: FakeHealth
    org: str
    listed: list[tuple[str, int]]  # the (backend id, weight) list the request routes over


@st.composite
def worlds(draw: st.DrawFn) -> World:
    count = draw(st.integers(1, 6))
    names = [f"b{n}" for n in range(count)]
    listed = draw(st.lists(st.tuples(st.sampled_from(names), st.integers(0, 5)), min_size=1, max_size=8))
    states = {b: draw(st.sampled_from(["healthy", "healthy", "degraded", "disabled"])) for b in names}
    health = FakeHealth({b: draw(st.sampled_from(AVAILABILITIES)) for b in names})
    with_override = draw(st.booleans())
    policy_backends = listed if not with_override else [(names[0], 1)]
    overrides = (
        {"org-x": {"backends": [{"backend_id": b, "weight": w} for b, w in listed]}} if with_override else {}
    )
    config = RuntimeConfig.model_validate(
        {
            "backends": [{"id": b, "base_url": f"http://{b}:8000/v1"} for b in names],
            "models": [
                {
                    "model": "m",
                    "backends": [{"backend_id": b, "weight": w} for b, w in policy_backends],
                    "org_overrides": overrides,
                }
            ],
            "backend_states": {b: {"state": s} for b, s in states.items()},
        }
    )
    return World(config, health, "org-x" if with_override else "org-y", listed)


def weights_of(world: World) -> dict[str, int]:
    """Backend id -> weight of its first entry (a backend listed twice counts once)."""
    weights: dict[str, int] = {}
    for b, w in world.listed:
        weights.setdefault(b, w)
    return weights


def decide(world: World, seed: int) -> RouteDecision | ApiError:
    try:
        return plan_route(world.config, world.health, RouteRequest("m", world.org, "k"), random.Random(seed))
    except ApiError as error:
        return error


@given(worlds(), st.integers(0, 2**32))
def test_candidate_list_invariants_for_any_snapshot_and_health(world: World, seed: int) -> None:
    state = {b: world.config.state_of(b).state for b, _ in world.listed}
    usable = {b for b, _ in world.listed if state[b] != "disabled" and world.health.states[b].usable}
    decision = decide(world, seed)
    if not usable:
        assert isinstance(decision, ApiError)
        assert decision.code == "NO_BACKEND_AVAILABLE"
        return
    assert isinstance(decision, RouteDecision)
    chosen = [c.backend.id for c in decision.candidates]
    assert chosen, "non-empty whenever some backend is usable"
    assert len(chosen) == len(set(chosen)), "no backend twice"
    assert set(chosen) == usable, "every usable backend, and only those"
    assert all(state[b] != "disabled" for b in chosen)
    # Tiers: healthy before degraded; within a tier weighted before weight 0.
    first_weight = weights_of(world)
    ranks = [(state[b] == "degraded", first_weight[b] == 0) for b in chosen]
    assert ranks == sorted(ranks)


@given(worlds(), st.integers(0, 2**32))
def test_primary_only_when_nothing_weighted_was_skipped(world: World, seed: int) -> None:
    decision = decide(world, seed)
    if isinstance(decision, ApiError):
        return
    first_weight = weights_of(world)
    impaired = [
        b
        for b, w in first_weight.items()
        if w > 0
        and world.config.state_of(b).state != "disabled"
        and (world.config.state_of(b).state == "degraded" or not world.health.states[b].full)
    ]
    first = decision.candidates[0].backend.id
    if impaired or first_weight[first] == 0:
        assert decision.reason == "FAILOVER"
    else:
        assert decision.reason == ("OVERRIDE" if world.org == "org-x" else "PRIMARY")
    if decision.warning is not None:
        assert len(decision.warning) <= 256
        assert decision.warning.isascii() and decision.warning.isprintable()


@given(worlds(), st.integers(0, 2**32))
def test_same_seed_same_decision(world: World, seed: int) -> None:
    first, again = decide(world, seed), decide(world, seed)
    if isinstance(first, ApiError):
        assert isinstance(again, ApiError) and again.code == first.code
    else:
        assert first == again


@given(worlds(), st.integers(0, 2**32))
def test_weight_zero_is_never_first_while_a_healthy_weighted_backend_is_usable(
    world: World, seed: int
) -> None:
    decision = decide(world, seed)
    if isinstance(decision, ApiError):
        return
    first_weight = weights_of(world)
    healthy_weighted = [
        b
        for b, w in first_weight.items()
        if w > 0 and world.config.state_of(b).state == "healthy" and world.health.states[b].usable
    ]
    if healthy_weighted:
        assert first_weight[decision.candidates[0].backend.id] > 0


@given(worlds(), st.integers(0, 2**32))
def test_the_engine_decides_what_plan_route_decides_up_to_the_draw(world: World, seed: int) -> None:
    """The engine's cached plans give the same candidates, tiers, reason and skips as the full path."""
    engine = RoutingEngine(world.health, random.Random(seed))
    planned = decide(world, seed)
    for _ in range(2):  # the second request is served from the cached plan
        try:
            decision = engine.candidates(world.config, RouteRequest("m", world.org, "k"))
        except ApiError as error:
            assert isinstance(planned, ApiError) and planned.code == error.code
            return
        assert isinstance(planned, RouteDecision)
        assert (decision.policy, decision.reason, decision.skipped) == (
            planned.policy,
            planned.reason,
            planned.skipped,
        )
        by_id = sorted(decision.candidates, key=lambda c: c.backend.id)
        assert by_id == sorted(planned.candidates, key=lambda c: c.backend.id)
        first_weight = weights_of(world)
        ranks = [(c.degraded, first_weight[c.backend.id] == 0) for c in decision.candidates]
        assert ranks == sorted(ranks)
        assert decision.warning == decision.warning_at(0)
