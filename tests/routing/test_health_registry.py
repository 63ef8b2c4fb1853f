"""The per-backend health registry: breakers fed by real traffic, probes, warm-up, counters."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from router_impl.routing.backend_errors import BackendCallError, error_for_status
from router_impl.routing.health import Availability, BackendHealth, breaker_outcome
from tests.harness.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def health(clock: ManualClock) -> BackendHealth:
    return BackendHealth(clock, cool_down_s=10.0, warmup_floor=0.05)


def trip(health: BackendHealth, backend_id: str = "a", threshold: int = 3) -> None:
    for _ in range(threshold):
        health.record_failure(backend_id, threshold)


def test_unknown_backend_is_fully_available(health: BackendHealth) -> None:
    assert health.availability("never-seen", 30) == Availability(usable=True)
    assert health.breaker_state("never-seen") == "closed"
    assert health.weight_factor("never-seen", 30) == 1.0
    assert health.try_acquire("never-seen")


def test_threshold_failures_open_the_breaker_and_log_an_alertable_event(health: BackendHealth) -> None:
    with capture_logs() as logs:
        health.record_failure("a", 3)
        health.record_failure("a", 3)
        assert health.availability("a", 30).usable
        health.record_failure("a", 3)
    assert health.availability("a", 30) == Availability(False, 0.0, "breaker_open")
    assert not health.try_acquire("a")
    opened = [e for e in logs if e["event"] == "backend_breaker_opened"]
    assert len(opened) == 1
    assert opened[0]["backend"] == "a"
    assert opened[0]["consecutive_failures"] == 3
    assert opened[0]["threshold"] == 3
    assert opened[0]["reopened"] is False
    assert opened[0]["log_level"] == "warning"
    stats = health.stats("a")
    assert (stats.breaker_state, stats.breaker_openings, stats.failures) == ("open", 1, 3)


def test_after_cool_down_one_request_takes_the_trial_and_the_other_is_turned_away(
    health: BackendHealth, clock: ManualClock
) -> None:
    trip(health)
    clock.advance(10.0)
    assert health.breaker_state("a") == "half_open"
    assert health.availability("a", 30) == Availability(True, 0.05, "half_open")
    assert health.try_acquire("a")
    assert not health.try_acquire("a")  # a concurrent request on the same loop
    assert health.availability("a", 30) == Availability(False, 0.0, "trial_in_flight")
    health.record_success("a")
    assert health.breaker_state("a") == "closed"


def test_released_trial_can_be_taken_again(health: BackendHealth, clock: ManualClock) -> None:
    trip(health)
    clock.advance(10.0)
    assert health.try_acquire("a")
    health.release("a")
    assert health.try_acquire("a")


def test_failed_trial_reopens_with_an_event(health: BackendHealth, clock: ManualClock) -> None:
    trip(health)
    clock.advance(10.0)
    assert health.try_acquire("a")
    with capture_logs() as logs:
        health.record_failure("a", 3)
    assert health.breaker_state("a") == "open"
    assert [e["reopened"] for e in logs if e["event"] == "backend_breaker_opened"] == [True]
    assert health.stats("a").breaker_openings == 2


def test_recovered_backend_weight_ramps_linearly_from_the_floor(
    health: BackendHealth, clock: ManualClock
) -> None:
    trip(health)
    clock.advance(10.0)
    health.record_success("a")  # closes: warm-up starts now
    assert health.weight_factor("a", 20) == 0.05  # the floor, so it does get traffic
    assert health.availability("a", 20) == Availability(True, 0.05, "warming_up")
    clock.advance(0.5)  # 2.5% of the window is below the floor
    assert health.weight_factor("a", 20) == 0.05
    clock.advance(4.5)
    assert health.weight_factor("a", 20) == pytest.approx(0.25)
    clock.advance(10.0)
    assert health.weight_factor("a", 20) == pytest.approx(0.75)
    assert health.availability("a", 20).full
    clock.advance(5.0)
    assert health.weight_factor("a", 20) == 1.0
    assert health.availability("a", 20) == Availability(True)


def test_no_warm_up_window_restores_full_weight_at_once(health: BackendHealth, clock: ManualClock) -> None:
    trip(health)
    clock.advance(10.0)
    health.record_success("a")
    assert health.weight_factor("a", 0) == 1.0


def test_failing_probe_makes_a_backend_unusable_and_passing_again_starts_warm_up(
    health: BackendHealth, clock: ManualClock
) -> None:
    with capture_logs() as logs:
        health.probe_result("a", True)
        assert health.availability("a", 30) == Availability(True)  # first probe ok: no warm-up
        health.probe_result("a", False)
        health.probe_result("a", False)
        assert health.availability("a", 30) == Availability(False, 0.0, "probe_failed")
        assert not health.try_acquire("a")
        clock.advance(60)
        health.probe_result("a", True)
    assert health.availability("a", 30) == Availability(True, 0.05, "warming_up")
    clock.advance(15)
    assert health.weight_factor("a", 30) == pytest.approx(0.5)
    assert [e["event"] for e in logs] == ["backend_probe_failed", "backend_probe_recovered"]
    assert health.stats("a").probe_ok is True


def test_probe_success_closes_a_half_open_breaker_but_not_an_open_one(
    health: BackendHealth, clock: ManualClock
) -> None:
    trip(health)
    clock.advance(5)
    health.probe_result("a", True)
    assert health.breaker_state("a") == "open"
    clock.advance(5)
    with capture_logs() as logs:
        health.probe_result("a", True)
    assert health.breaker_state("a") == "closed"
    assert logs[0]["event"] == "backend_breaker_closed"
    assert logs[0]["via"] == "probe"


def test_probe_failure_in_half_open_reopens(health: BackendHealth, clock: ManualClock) -> None:
    trip(health)
    clock.advance(10)
    health.probe_result("a", False)
    assert health.breaker_state("a") == "open"
    clock.advance(10)
    health.probe_result("a", True)
    assert health.availability("a", 30) == Availability(True, 0.05, "warming_up")


def test_failovers_and_outcomes_are_counted_per_backend(health: BackendHealth) -> None:
    health.record_success("a")
    health.record_failure("b", 5)
    health.record_failover("b")
    assert health.stats("a").successes == 1
    b = health.stats("b")
    assert (b.failures, b.failovers, b.consecutive_failures, b.breaker_state) == (1, 1, 1, "closed")


def test_forget_except_drops_unconfigured_backends(health: BackendHealth) -> None:
    trip(health, "a")
    trip(health, "b")
    health.forget_except(["b"])
    assert health.known() == ["b"]
    assert health.breaker_state("a") == "closed"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (
            BackendCallError("BACKEND_UNAVAILABLE", reason="connect", maybe_processed=False, backend_id="a"),
            "failure",
        ),
        (
            BackendCallError("BACKEND_TIMEOUT", reason="timeout", maybe_processed=True, backend_id="a"),
            "failure",
        ),
        (
            BackendCallError(
                "BACKEND_UNAVAILABLE", reason="disconnect", maybe_processed=True, backend_id="a"
            ),
            "failure",
        ),
        (
            BackendCallError("BACKEND_ERROR", reason="bad_response", maybe_processed=True, backend_id="a"),
            "failure",
        ),
        (
            BackendCallError(
                "BACKEND_UNAVAILABLE", reason="connect_timeout", maybe_processed=False, backend_id="a"
            ),
            "failure",
        ),
        (
            BackendCallError(
                "BACKEND_TIMEOUT", reason="connect_timeout", maybe_processed=False, backend_id="a"
            ),
            "neutral",
        ),
        (
            BackendCallError("BACKEND_TIMEOUT", reason="deadline", maybe_processed=False, backend_id="a"),
            "neutral",
        ),
        (
            BackendCallError("BACKEND_UNAVAILABLE", reason="closed", maybe_processed=False, backend_id="a"),
            "neutral",
        ),
        (error_for_status("a", 500, b"", {}), "failure"),
        (error_for_status("a", 503, b"", {}), "failure"),
        (error_for_status("a", 429, b"", {}), "failure"),
        (error_for_status("a", 408, b"", {}), "failure"),
        (error_for_status("a", 400, b"", {}), "success"),
        (error_for_status("a", 404, b"", {}), "success"),
    ],
)
def test_breaker_outcome_of_call_errors(error: BackendCallError, outcome: str) -> None:
    assert breaker_outcome(error) == outcome


def test_record_error_dispatches_on_the_outcome(health: BackendHealth, clock: ManualClock) -> None:
    connect = BackendCallError("BACKEND_UNAVAILABLE", reason="connect", maybe_processed=False, backend_id="a")
    assert health.record_error("a", connect, 1) == "failure"
    assert health.breaker_state("a") == "open"
    clock.advance(10)
    assert health.try_acquire("a")
    deadline = BackendCallError("BACKEND_TIMEOUT", reason="deadline", maybe_processed=False, backend_id="a")
    assert health.record_error("a", deadline, 1) == "neutral"  # trial handed back, not judged
    assert health.breaker_state("a") == "half_open"
    assert health.try_acquire("a")
    assert health.record_error("a", error_for_status("a", 400, b"", {}), 1) == "success"
    assert health.breaker_state("a") == "closed"


def test_floor_must_be_a_fraction() -> None:
    with pytest.raises(ValueError):
        BackendHealth(warmup_floor=0)
