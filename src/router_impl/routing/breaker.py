"""One backend's circuit breaker, as a plain state machine; time is passed in, nothing else is touched.

closed --(threshold consecutive failures)--> open --(cool-down elapsed)--> half_open
half_open --(trial or probe succeeds)--> closed;  half_open --(trial or probe fails)--> open again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
# What a recorded outcome did to the breaker, so the owner can log it.
BreakerChange = Literal["opened", "reopened", "closed"]

DEFAULT_COOL_DOWN_S = 10.0
DEFAULT_TRIAL_LEASE_S = 60.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``trial_lease_s`` frees a half-open trial whose outcome never arrives (a cancelled call)."""

    cool_down_s: float = DEFAULT_COOL_DOWN_S
    trial_lease_s: float = DEFAULT_TRIAL_LEASE_S

    def __post_init__(self) -> None:
        if self.cool_down_s < 0 or self.trial_lease_s <= 0:
            raise ValueError("cool_down_s must be >= 0 and trial_lease_s > 0")


class CircuitBreaker:
    """Half-open is not stored: an open breaker whose cool-down has elapsed *is* half-open, so no
    timer is needed and a reader at any moment sees the right state."""

    __slots__ = ("_failures", "_open", "_opened_at", "_settings", "_trial_since", "closed_at", "openings")

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self._settings = settings or BreakerSettings()
        self._open = False
        self._opened_at = 0.0
        self._failures = 0
        self._trial_since: float | None = None
        self.openings = 0  # times the breaker opened, re-openings from half-open included
        self.closed_at: float | None = None  # the last recovery (half-open -> closed): warm-up starts here

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def state(self, now: float) -> BreakerState:
        if not self._open:
            return "closed"
        return "half_open" if now - self._opened_at >= self._settings.cool_down_s else "open"

    def trial_taken(self, now: float) -> bool:
        """A half-open trial is under way (and its lease has not run out)."""
        return self._trial_since is not None and now - self._trial_since < self._settings.trial_lease_s

    def try_acquire(self, now: float) -> bool:
        """May a call go to this backend now? Closed: always. Open: never. Half-open: one caller,
        until its outcome is recorded (or it is released, or its lease runs out)."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "open" or self.trial_taken(now):
            return False
        self._trial_since = now
        return True

    def release(self) -> None:
        """Give back a half-open trial without an outcome (the call was cancelled or never made)."""
        self._trial_since = None

    def record_success(self, now: float) -> BreakerChange | None:
        state = self.state(now)
        if state == "open":
            return None  # a late answer to a call sent before the breaker opened proves little
        self._failures = 0
        self._trial_since = None
        if state == "half_open":
            self._open = False
            self.closed_at = now
            return "closed"
        return None

    def record_failure(self, now: float, threshold: int) -> BreakerChange | None:
        state = self.state(now)
        if state == "open":
            return None  # a late failure must not stretch the cool-down
        self._trial_since = None
        if state == "half_open":
            self._trip(now)
            return "reopened"
        self._failures += 1
        if self._failures >= threshold:
            self._trip(now)
            return "opened"
        return None

    def record_probe(self, now: float, ok: bool) -> BreakerChange | None:
        """An active health check decides a half-open breaker like a trial would; otherwise the
        breaker follows real traffic only (a /health that answers says little about inference)."""
        if self.state(now) != "half_open":
            return None
        return self.record_success(now) if ok else self.record_failure(now, 1)

    def _trip(self, now: float) -> None:
        self._open = True
        self._opened_at = now
        self.openings += 1
