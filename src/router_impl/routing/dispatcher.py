"""Tries a route's candidates in order until one answers: failover inside one request.

Moves on after a connect error, a connection that broke before any byte of the answer arrived
(reset, or closed before the status line: the request may have run there, as after a timeout, but
nothing of it reached the client), a timeout before any response, a 429, or a status in the
policy's ``retry_on`` (502/503/504 unless set); any other error is the answer. Only the attempt
that answered is billed. Skips backends at their ``max_in_flight``
(backpressure: when every candidate is saturated the answer is 503 with Retry-After, and no task
waits for a slot) and half-open backends whose single trial is taken. Every outcome is recorded
with the health registry, which opens and closes the breakers, and each call is one
``backend.attempt`` span (backend id, outcome, HTTP status), current while ``send`` runs so the
traceparent sent to the backend names it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from router_impl.errors import ApiError
from router_impl.routing.backend_errors import BackendCallError
from router_impl.routing.backend_port import BackendPort
from router_impl.routing.engine import Candidate, RouteDecision
from router_impl.routing.health import BackendHealth
from router_impl.telemetry.tracing import Tracing, mark_failed

T = TypeVar("T")
log = structlog.get_logger("router.routing")


@dataclass(frozen=True)
class Attempted(Generic[T]):
    candidate: Candidate
    index: int  # position in the decision's candidates: reason_at / warning_at
    attempts: int  # backend calls made for this request
    result: T


def may_fail_over(error: BackendCallError, retry_on: Collection[int]) -> bool:
    return (
        error.retry_safe
        or error.code == "BACKEND_TIMEOUT"
        or error.reason == "reset"
        or error.upstream_status in retry_on
    )


class Dispatcher:
    def __init__(
        self,
        backends: BackendPort,
        health: BackendHealth,
        *,
        observe: Callable[[str, str, float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        tracer: Tracing | None = None,
    ) -> None:
        self.backends = backends
        self.health = health
        self.observe = observe  # (backend id, outcome, seconds) per call, e.g. for metrics
        self.monotonic = monotonic
        self.tracer = tracer or Tracing()

    async def call(self, decision: RouteDecision, send: Callable[[Candidate], Awaitable[T]]) -> Attempted[T]:
        attempts, saturated = 0, 0
        last: BackendCallError | None = None
        threshold = decision.policy.failover_threshold
        for index, candidate in enumerate(decision.candidates):
            backend_id = candidate.backend.id
            if self.backends.in_flight(backend_id) >= candidate.backend.max_in_flight:
                saturated += 1
                continue
            if not self.health.try_acquire(backend_id):
                continue
            attempts += 1
            started = self.monotonic()
            with self.tracer.span("backend.attempt", {"router.backend.id": backend_id}, client=True) as span:
                try:
                    result = await send(candidate)
                except BackendCallError as exc:
                    outcome = _outcome(exc)
                    span.set_attribute("router.attempt.outcome", outcome)
                    if exc.upstream_status is not None:
                        span.set_attribute("http.response.status_code", exc.upstream_status)
                    self._observe(backend_id, outcome, started)
                    self.health.record_error(backend_id, exc, threshold)
                    if exc.upstream_status in (401, 403) or exc.reason == "config":
                        log.error(
                            "backend_credentials_refused"
                            if exc.reason == "status"
                            else "backend_credential_missing",
                            backend=backend_id,
                            upstream_status=exc.upstream_status,
                            credential=candidate.backend.credential,  # a variable or file name, never a token
                        )
                    if not may_fail_over(exc, decision.policy.retry_on):
                        raise
                    mark_failed(span, exc)
                    self.health.record_failover(backend_id)
                    log.warning(
                        "backend_failover", backend=backend_id, reason=exc.reason, model=decision.policy.model
                    )
                    last = exc
                    continue
                except BaseException as exc:
                    span.set_attribute("router.attempt.outcome", type(exc).__name__)
                    self.health.release(backend_id)  # cancelled or crashed: give a half-open trial back
                    raise
                span.set_attribute("router.attempt.outcome", "ok")
                status = getattr(result, "status", None)  # a BackendReply's; a stream opened on a 2xx
                if isinstance(status, int):
                    span.set_attribute("http.response.status_code", status)
            self._observe(backend_id, "ok", started)
            self.health.record_success(backend_id)
            return Attempted(candidate, index, attempts, result)
        if last is not None:
            raise last
        if saturated:
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Every backend for this model is at capacity.",
                headers={"Retry-After": "1"},
            )
        raise ApiError("NO_BACKEND_AVAILABLE", f"No backend is available for '{decision.policy.model}'.")

    def _observe(self, backend_id: str, outcome: str, started: float) -> None:
        if self.observe is not None:
            self.observe(backend_id, outcome, self.monotonic() - started)


def _outcome(error: BackendCallError) -> str:
    """The metrics outcome of a failed call: timeout, connect_error or error."""
    if error.reason in ("timeout", "deadline"):
        return "timeout"
    if error.reason in ("connect", "connect_timeout"):
        return "connect_error"
    return "error"
