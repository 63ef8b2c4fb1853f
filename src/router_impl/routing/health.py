"""What the router knows about each backend's health: its circuit breaker (fed by real traffic),
the last active probe, and the warm-up that brings a recovered backend's weight back gradually.

Plain in-memory state on one event loop, with the clock injected; no I/O besides log events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from router_impl.routing.backend_errors import BackendCallError
from router_impl.routing.breaker import (
    DEFAULT_COOL_DOWN_S,
    DEFAULT_TRIAL_LEASE_S,
    BreakerChange,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
)

DEFAULT_WARMUP_FLOOR = 0.05

# Why a backend is not fully available. "warming_up" and "half_open" backends are usable (the
# latter for one trial call at a time); the others are not.
AvailabilityReason = Literal["warming_up", "half_open", "trial_in_flight", "breaker_open", "probe_failed"]
Outcome = Literal["success", "failure", "neutral"]

log = structlog.get_logger("router.routing")


@dataclass(frozen=True, slots=True)
class Availability:
    usable: bool
    weight_factor: float = 1.0  # multiplies the configured weight (warm-up, half-open trial)
    reason: AvailabilityReason | None = None

    @property
    def full(self) -> bool:
        """Usable as a normal member of its policy (warming up counts: it is back, at a lower weight)."""
        return self.usable and self.reason in (None, "warming_up")


FULLY_AVAILABLE = Availability(usable=True)


class HealthView(Protocol):
    """What the routing engine asks about a backend; ``warmup_seconds`` comes from the policy."""

    def availability(self, backend_id: str, warmup_seconds: float) -> Availability: ...


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Counters and state of one backend, for metrics and the admin API."""

    breaker_state: BreakerState
    consecutive_failures: int
    probe_ok: bool | None  # None until the first probe
    breaker_openings: int
    failovers: int  # times a request moved on from this backend to another
    successes: int
    failures: int


def breaker_outcome(error: BackendCallError) -> Outcome:
    """How a failed call counts for the breaker. A backend that answers a client error is alive
    (success); one that never got the request because of us (deadline, shutdown) is not judged."""
    if error.reason in ("deadline", "closed"):
        return "neutral"
    if error.reason == "connect_timeout" and error.code == "BACKEND_TIMEOUT":
        return "neutral"  # the caller's deadline, not the backend's connect timeout, ran out
    status = error.upstream_status
    if error.reason == "status" and status is not None and 400 <= status < 500 and status not in (408, 429):
        return "success"
    return "failure"


@dataclass(slots=True)
class _Backend:
    breaker: CircuitBreaker
    probe_ok: bool | None = None
    probe_recovered_at: float | None = None
    failovers: int = 0
    successes: int = 0
    failures: int = 0

    def recovered_at(self) -> float | None:
        times = [t for t in (self.breaker.closed_at, self.probe_recovered_at) if t is not None]
        return max(times) if times else None


class BackendHealth:
    """The per-backend health registry; implements ``HealthView``.

    A backend is unusable while its breaker is open or its last probe failed; half-open it takes
    one trial call at a time (``try_acquire``). After a recovery (breaker closed again, or probe
    back to passing) its weight factor ramps linearly from ``warmup_floor`` to 1 over the
    policy's ``warmup_seconds``. A backend never seen is fully available.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        cool_down_s: float = DEFAULT_COOL_DOWN_S,
        trial_lease_s: float = DEFAULT_TRIAL_LEASE_S,
        warmup_floor: float = DEFAULT_WARMUP_FLOOR,
        on_open: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 < warmup_floor <= 1:
            raise ValueError("warmup_floor must be in (0, 1]")
        self._clock = clock
        self._settings = BreakerSettings(cool_down_s=cool_down_s, trial_lease_s=trial_lease_s)
        self._floor = warmup_floor
        self._on_open = on_open  # called with the backend id when its breaker opens (metrics)
        self._backends: dict[str, _Backend] = {}

    # ------------------------------------------------------------------ reading

    def availability(self, backend_id: str, warmup_seconds: float) -> Availability:
        backend = self._backends.get(backend_id)
        if backend is None:
            return FULLY_AVAILABLE
        now = self._clock()
        if backend.probe_ok is False:
            return Availability(False, 0.0, "probe_failed")
        state = backend.breaker.state(now)
        if state == "open":
            return Availability(False, 0.0, "breaker_open")
        if state == "half_open":
            if backend.breaker.trial_taken(now):
                return Availability(False, 0.0, "trial_in_flight")
            return Availability(True, self._floor, "half_open")
        factor = self._factor(backend, now, warmup_seconds)
        return FULLY_AVAILABLE if factor >= 1.0 else Availability(True, factor, "warming_up")

    def breaker_state(self, backend_id: str) -> BreakerState:
        backend = self._backends.get(backend_id)
        return "closed" if backend is None else backend.breaker.state(self._clock())

    def weight_factor(self, backend_id: str, warmup_seconds: float) -> float:
        """The warm-up factor alone (1 when not recovering), whatever the breaker says."""
        backend = self._backends.get(backend_id)
        return 1.0 if backend is None else self._factor(backend, self._clock(), warmup_seconds)

    def stats(self, backend_id: str) -> BackendStats:
        backend = self._get(backend_id)
        return BackendStats(
            breaker_state=backend.breaker.state(self._clock()),
            consecutive_failures=backend.breaker.consecutive_failures,
            probe_ok=backend.probe_ok,
            breaker_openings=backend.breaker.openings,
            failovers=backend.failovers,
            successes=backend.successes,
            failures=backend.failures,
        )

    def known(self) -> list[str]:
        return list(self._backends)

    # ------------------------------------------------------------------ calls

    def try_acquire(self, backend_id: str) -> bool:
        """Ask right before calling a backend; False means skip it (open, failing its probe, or
        half-open with the one trial already taken). Synchronous, so two requests on the loop
        cannot both take the trial. Every True must be followed by a ``record_*`` or ``release``."""
        backend = self._get(backend_id)
        if backend.probe_ok is False:
            return False
        return backend.breaker.try_acquire(self._clock())

    def release(self, backend_id: str) -> None:
        """The call was not made or ended without an outcome (cancelled): free a half-open trial."""
        backend = self._backends.get(backend_id)
        if backend is not None:
            backend.breaker.release()

    def record_success(self, backend_id: str) -> None:
        backend = self._get(backend_id)
        backend.successes += 1
        self._changed(backend_id, backend, backend.breaker.record_success(self._clock()), via="request")

    def record_failure(self, backend_id: str, threshold: int) -> None:
        """``threshold`` is the serving policy's ``failover_threshold``."""
        backend = self._get(backend_id)
        backend.failures += 1
        change = backend.breaker.record_failure(self._clock(), threshold)
        self._changed(backend_id, backend, change, via="request", threshold=threshold)

    def record_error(self, backend_id: str, error: BackendCallError, threshold: int) -> Outcome:
        """Record a failed call by what it says about the backend (see ``breaker_outcome``)."""
        outcome = breaker_outcome(error)
        if outcome == "success":
            self.record_success(backend_id)
        elif outcome == "failure":
            self.record_failure(backend_id, threshold)
        else:
            self.release(backend_id)
        return outcome

    def record_failover(self, backend_id: str) -> None:
        """A request gave up on ``backend_id`` and moved on to its next candidate."""
        self._get(backend_id).failovers += 1

    # ------------------------------------------------------------------ probes

    def probe_result(self, backend_id: str, ok: bool) -> None:
        backend = self._get(backend_id)
        now = self._clock()
        was = backend.probe_ok
        backend.probe_ok = ok
        if ok and was is False:
            backend.probe_recovered_at = now
            log.info("backend_probe_recovered", backend=backend_id)
        elif not ok and was is not False:
            log.warning("backend_probe_failed", backend=backend_id)
        self._changed(backend_id, backend, backend.breaker.record_probe(now, ok), via="probe")

    def forget_except(self, backend_ids: Iterable[str]) -> None:
        """Drop the state of backends no longer configured."""
        keep = set(backend_ids)
        for backend_id in [b for b in self._backends if b not in keep]:
            del self._backends[backend_id]

    # ------------------------------------------------------------------ internals

    def _get(self, backend_id: str) -> _Backend:
        backend = self._backends.get(backend_id)
        if backend is None:
            backend = self._backends[backend_id] = _Backend(CircuitBreaker(self._settings))
        return backend

    def _factor(self, backend: _Backend, now: float, warmup_seconds: float) -> float:
        recovered_at = backend.recovered_at()
        if recovered_at is None or warmup_seconds <= 0:
            return 1.0
        ramp = (now - recovered_at) / warmup_seconds
        return 1.0 if ramp >= 1.0 else max(self._floor, ramp)

    def _changed(
        self,
        backend_id: str,
        backend: _Backend,
        change: BreakerChange | None,
        *,
        via: str,
        threshold: int | None = None,
    ) -> None:
        if change is None:
            return
        if change == "closed":
            log.info("backend_breaker_closed", backend=backend_id, via=via)
            return
        if self._on_open is not None:
            self._on_open(backend_id)
        log.warning(
            "backend_breaker_opened",
            backend=backend_id,
            reopened=change == "reopened",
            via=via,
            consecutive_failures=backend.breaker.consecutive_failures,
            threshold=threshold,
            cool_down_s=self._settings.cool_down_s,
            openings=backend.breaker.openings,
        )
