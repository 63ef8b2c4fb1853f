"""The circuit breaker state machine, driven by an explicit clock: every transition, exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_impl.routing.breaker import BreakerSettings, CircuitBreaker

COOL_DOWN = 10.0


def opened(threshold: int = 3, at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(BreakerSettings(cool_down_s=COOL_DOWN))
    for _ in range(threshold):
        breaker.record_failure(at, threshold)
    assert breaker.state(at) == "open"
    return breaker


@pytest.mark.parametrize("threshold", [1, 2, 3, 7])
def test_breaker_opens_at_exactly_threshold_consecutive_failures(threshold: int) -> None:
    breaker = CircuitBreaker()
    for n in range(1, threshold):
        assert breaker.record_failure(0.0, threshold) is None
        assert breaker.state(0.0) == "closed"
        assert breaker.consecutive_failures == n
    assert breaker.record_failure(0.0, threshold) == "opened"
    assert breaker.state(0.0) == "open"
    assert breaker.openings == 1


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker()
    breaker.record_failure(0.0, 3)
    breaker.record_failure(0.0, 3)
    assert breaker.record_success(0.0) is None
    assert breaker.consecutive_failures == 0
    breaker.record_failure(0.0, 3)
    breaker.record_failure(0.0, 3)
    assert breaker.state(0.0) == "closed"
    assert breaker.record_failure(0.0, 3) == "opened"


def test_open_breaker_refuses_calls_until_the_cool_down_elapses_then_is_half_open() -> None:
    breaker = opened(at=100.0)
    assert not breaker.try_acquire(100.0)
    assert breaker.state(100.0 + COOL_DOWN - 0.001) == "open"
    assert not breaker.try_acquire(100.0 + COOL_DOWN - 0.001)
    assert breaker.state(100.0 + COOL_DOWN) == "half_open"


def test_half_open_admits_exactly_one_trial_at_a_time() -> None:
    breaker = opened()
    assert breaker.try_acquire(COOL_DOWN)
    assert not breaker.try_acquire(COOL_DOWN)
    assert not breaker.try_acquire(COOL_DOWN + 5)
    assert breaker.trial_taken(COOL_DOWN + 5)
    breaker.release()
    assert breaker.try_acquire(COOL_DOWN + 5)


def test_half_open_trial_success_closes_and_marks_the_recovery_time() -> None:
    breaker = opened()
    assert breaker.try_acquire(12.0)
    assert breaker.record_success(12.0) == "closed"
    assert breaker.state(12.0) == "closed"
    assert breaker.closed_at == 12.0
    assert breaker.consecutive_failures == 0
    assert breaker.try_acquire(12.0) and breaker.try_acquire(12.0)  # closed: no limit


def test_half_open_trial_failure_reopens_and_restarts_the_cool_down() -> None:
    breaker = opened()
    assert breaker.try_acquire(15.0)
    assert breaker.record_failure(15.0, 3) == "reopened"  # one failure suffices, whatever the threshold
    assert breaker.state(15.0 + COOL_DOWN - 0.001) == "open"
    assert breaker.state(15.0 + COOL_DOWN) == "half_open"
    assert breaker.openings == 2
    assert breaker.try_acquire(15.0 + COOL_DOWN)  # the new half-open has its own trial


def test_late_outcomes_while_open_change_nothing() -> None:
    breaker = opened(at=0.0)
    assert breaker.record_success(5.0) is None
    assert breaker.record_failure(5.0, 3) is None
    assert breaker.state(5.0) == "open"
    assert breaker.state(COOL_DOWN) == "half_open"  # the cool-down was not stretched


def test_a_trial_whose_outcome_never_arrives_is_freed_by_its_lease() -> None:
    breaker = CircuitBreaker(BreakerSettings(cool_down_s=COOL_DOWN, trial_lease_s=30.0))
    for _ in range(3):
        breaker.record_failure(0.0, 3)
    assert breaker.try_acquire(COOL_DOWN)
    assert not breaker.try_acquire(COOL_DOWN + 29.9)
    assert breaker.try_acquire(COOL_DOWN + 30.0)


def test_probe_decides_a_half_open_breaker_but_nothing_else() -> None:
    closed = CircuitBreaker()
    closed.record_failure(0.0, 3)
    assert closed.record_probe(0.0, True) is None
    assert closed.consecutive_failures == 1  # a passing /health does not vouch for inference
    assert closed.record_probe(0.0, False) is None
    assert closed.state(0.0) == "closed"

    breaker = opened()
    assert breaker.record_probe(COOL_DOWN - 1, True) is None
    assert breaker.state(COOL_DOWN - 1) == "open"
    assert breaker.record_probe(COOL_DOWN, False) == "reopened"
    assert breaker.record_probe(2 * COOL_DOWN, True) == "closed"
    assert breaker.state(2 * COOL_DOWN) == "closed"


def test_zero_cool_down_goes_half_open_at_once() -> None:
    breaker = CircuitBreaker(BreakerSettings(cool_down_s=0.0))
    breaker.record_failure(0.0, 1)
    assert breaker.state(0.0) == "half_open"


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(cool_down_s=-1)
    with pytest.raises(ValueError):
        BreakerSettings(trial_lease_s=0)


Event = tuple[str, float]
events = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "acquire", "release", "probe_ok", "probe_fail"]), st.floats(0, 5)
    ),
    max_size=60,
)


@given(events, st.integers(1, 5))
def test_breaker_invariants_hold_for_any_history(history: list[Event], threshold: int) -> None:
    """Against a tiny reference model: the state is always the one the transitions imply."""
    breaker = CircuitBreaker(BreakerSettings(cool_down_s=COOL_DOWN))
    now, failures, opened_at, is_open = 0.0, 0, 0.0, False
    for action, step in history:
        now += step
        half_open = is_open and now - opened_at >= COOL_DOWN
        if action == "ok" or (action == "probe_ok" and half_open):
            if not is_open or half_open:
                failures, is_open = 0, False
            breaker.record_success(now) if action == "ok" else breaker.record_probe(now, True)
        elif action == "fail" or (action == "probe_fail" and half_open):
            if half_open:
                opened_at = now
            elif not is_open:
                failures += 1
                if failures >= threshold:
                    is_open, opened_at = True, now
            breaker.record_failure(now, threshold) if action == "fail" else breaker.record_probe(now, False)
        elif action == "acquire":
            admitted = breaker.try_acquire(now)
            assert admitted or is_open
            if not is_open or not half_open:
                assert admitted == (not is_open)
        elif action == "release":
            breaker.release()
        expected = "closed" if not is_open else ("half_open" if now - opened_at >= COOL_DOWN else "open")
        assert breaker.state(now) == expected


def test_settings_need_a_cool_down_not_negative_and_a_trial_lease_above_zero() -> None:
    assert BreakerSettings(cool_down_s=0.0, trial_lease_s=0.5).trial_lease_s == 0.5
    for bad in ({"cool_down_s": -0.1}, {"trial_lease_s": 0.0}):
        with pytest.raises(ValueError, match=r"^cool_down_s must be >= 0 and trial_lease_s > 0$"):
            BreakerSettings(**bad)


def test_no_trial_is_taken_on_a_fresh_breaker_nor_after_a_success() -> None:
    breaker = CircuitBreaker()
    assert not breaker.trial_taken(0.0)
    breaker.record_success(0.0)
    assert not breaker.trial_taken(0.0)


def test_a_late_success_while_open_changes_nothing() -> None:
    breaker = opened(threshold=3)
    assert breaker.record_success(1.0) is None
    assert (breaker.state(1.0), breaker.consecutive_failures) == ("open", 3)
