"""The request pipeline for completions: route, then call or relay inside the hold and admission stages.

``complete`` and ``stream`` read the same way::

    route -> async with IdempotencyHold (begin .. store | release)
               async with Admission (admit .. settle | refund)
                 call the backend (or open the stream and hand it to the relay)
                 account: routing decision, usage record and audit event (usage/accounting.py)

A stream outlives ``stream()``: its stages move to an exit stack the relay (or ``abandon``, when
the client left before the first event) closes. Transport-free: handlers translate HTTP to a
``Call`` and render the ``FinalReply`` or ``StreamingReply`` back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.config.model import ModelPolicy, RuntimeConfig
from router_impl.errors import ApiError
from router_impl.limits.idempotency import IdempotencyStore, request_fingerprint
from router_impl.limits.service import LimitsService
from router_impl.pipeline.admission import Admission
from router_impl.pipeline.call import Call, Completed, FinalReply, Routed, StreamingReply
from router_impl.pipeline.hold import IdempotencyHold
from router_impl.pipeline.relay import RelayOutcome, relay
from router_impl.routing.backend_port import BackendPort, BackendReply, BackendRequest, OpenedStream
from router_impl.routing.decisions import DecisionLog, RoutingDecisionRecord
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import Candidate, RouteDecision, RouteRequest, RoutingEngine, policy_named
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.accounting import Accounting, Served, served
from router_impl.usage.auditing import Auditing
from router_impl.usage.cost import cost_micro_usd
from router_impl.usage.record import Usage
from router_impl.usage.sink import UsageSink
from router_impl.usage.tokens import estimate, estimate_tokens, prompt_estimate, usage_of

# A non-streamed request holds its idempotency key until its backend deadline plus this (the usage
# record and the stored reply are written after the call); a retry may take the key over afterwards.
_SETTLE_MARGIN_SECONDS = 5.0

log = structlog.get_logger("router.pipeline")

fingerprint = request_fingerprint
Render = Callable[[Call, Completed], FinalReply]


class Pipeline:
    def __init__(
        self,
        *,
        config: Callable[[], RuntimeConfig],
        authenticator: Authenticator,
        backends: BackendPort,
        engine: RoutingEngine,
        dispatcher: Dispatcher,
        decisions: DecisionLog,
        idempotency: IdempotencyStore,
        usage: UsageSink,
        request_timeout_seconds: float = 120.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        max_stored_stream_bytes: int = 1024 * 1024,
        limits: LimitsService | None = None,
        auditing: Auditing | None = None,
        accepting: Callable[[], bool] = lambda: True,
        on_routed: Callable[[str, str], None] | None = None,
        tracer: Tracing | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.backends = backends
        self.engine = engine
        self.dispatcher = dispatcher
        self.decisions = decisions
        self.request_timeout_seconds = request_timeout_seconds
        self.idempotency = idempotency
        self.now = now
        self.monotonic = monotonic
        self.max_stored_stream_bytes = max_stored_stream_bytes
        self.limits = limits
        self.accepting = accepting  # False while the usage outbox is full: billable work is refused
        self.on_routed = on_routed  # (model, decision) per served request (metrics)
        self.tracer = tracer or Tracing()  # spans: route, limits, usage.write (off: no-ops)
        self.accounting = Accounting(usage, auditing or Auditing(None), self.tracer)

    # ------------------------------------------------------------------ routing

    def route(self, call: Call) -> RouteDecision:
        """The ordered candidates for this request (weights, health, kill switches, org policy)."""
        with self.tracer.span("route") as span:
            snapshot = self.config()
            policy = policy_named(snapshot, call.model, lambda: self.model_names(call.principal))
            self.authenticator.authorize_model(call.principal, policy.model, call.model)
            principal = call.principal
            decision = self.engine.candidates(
                snapshot, RouteRequest(call.model, principal.organization_id, principal.key_id)
            )
            span.set_attribute("router.model", policy.model)
            span.set_attribute("router.candidates", len(decision.candidates))
            return decision

    def available_models(self, principal: Principal) -> list[tuple[str, ModelPolicy]]:
        """(name, policy) for every model name or alias this key may use."""
        allowed = principal.allowed_models
        return [
            (name, m)
            for m in self.config().models
            if m.enabled
            for name in (m.model, *m.aliases)
            if allowed is None or name in allowed or m.model in allowed
        ]

    def model_names(self, principal: Principal) -> list[str]:
        return [name for name, _ in self.available_models(principal)]

    # ------------------------------------------------------------------ stages

    def _hold(self, call: Call, within_seconds: float | None = None) -> IdempotencyHold:
        return IdempotencyHold(self.idempotency, call, self.now, within_seconds)

    def _admission(self, call: Call, policy: ModelPolicy) -> Admission:
        return Admission(
            call,
            policy,
            limits=self.limits,
            accepting=self.accepting,
            accounting=self.accounting,
            now=self.now,
            tracer=self.tracer,
        )

    def _request(
        self, call: Call, candidate: Candidate, body: dict[str, Any], deadline: float
    ) -> BackendRequest:
        return BackendRequest(
            kind=call.kind,
            body=_dumps(body),
            traceparent=self.tracer.traceparent(call.trace_id, call.span_id),  # the attempt's span
            request_id=call.request_id,
            deadline=deadline,
        )

    # ------------------------------------------------------------------ non-streaming

    async def complete(self, call: Call, render: Render) -> FinalReply:
        """One completion; a retried idempotency key replays the stored reply and is not billed."""
        decision = self.route(call)
        async with self._hold(call, self.request_timeout_seconds + _SETTLE_MARGIN_SECONDS) as hold:
            if hold.replay is not None:
                return hold.replay
            async with self._admission(call, decision.policy) as admitted:
                completed = await self._call_backend(admitted.call, decision)
                reply = render(admitted.call, completed)
                reply = replace(
                    reply, headers={**reply.headers, **admitted.headers}, served_by=completed.routed.served_by
                )
                await self.account(admitted, completed, reply.status, record_id=hold.record_id)
            hold.keep(reply)
        return reply

    async def _call_backend(self, call: Call, decision: RouteDecision) -> Completed:
        started = self.monotonic()
        deadline = started + self.request_timeout_seconds

        async def send(candidate: Candidate) -> BackendReply:
            body = {**call.body, "model": candidate.backend_model}
            return await self.backends.send(candidate.backend, self._request(call, candidate, body, deadline))

        attempted = await self.dispatcher.call(decision, send)
        routed, answer = Routed.of(decision, attempted), attempted.result
        payload = answer.document
        usage = usage_of(payload) or estimate(call.kind, call.body, payload)
        latency_ms = int((self.monotonic() - started) * 1000)
        cost = cost_micro_usd(routed.policy.pricing, usage.tokens_input, usage.tokens_output)
        return Completed(routed, payload, answer.body, usage, cost, latency_ms)

    async def account(
        self, admitted: Admission, completed: Completed, status: int, *, record_id: uuid.UUID | None = None
    ) -> None:
        """Settle the reservation, log the routing decision, write the usage record and audit event."""
        call, routed, usage = admitted.call, completed.routed, completed.usage
        snapshot, budget_metadata = await admitted.settle(
            usage.tokens_input + usage.tokens_output, completed.cost_micro_usd
        )
        at = self.now()
        if self.on_routed is not None:
            self.on_routed(routed.policy.model, routed.decision)
        self.decisions.record(
            RoutingDecisionRecord(
                request_id=call.request_id,
                timestamp=at,
                model=routed.policy.model,
                organization_id=call.principal.organization_id,
                api_key_id=call.principal.key_id,
                backend_id=routed.backend.id,
                decision=routed.decision,
                attempts=routed.attempts,
                latency_ms=completed.latency_ms,
                warning=routed.warning,
            )
        )
        what = Served(
            model=routed.policy.model,
            backend_id=routed.backend.id,
            decision=routed.decision,
            attempts=routed.attempts,
            usage=usage,
            latency_ms=completed.latency_ms,
            cost_micro_usd=completed.cost_micro_usd,
            status=status,
            budget_snapshot=snapshot,
            budget_metadata=budget_metadata,
            record_id=record_id,
        )
        await self.accounting.write(served(call.requester, what, at))

    # ------------------------------------------------------------------ streaming

    async def stream(self, call: Call) -> StreamingReply | FinalReply:
        """Server-sent events passed through chunk by chunk; usage taken from the final chunk.

        With an idempotency key, the transcript of a finished stream is stored (up to
        ``max_stored_stream_bytes``) and a retry replays it whole; a stream that broke or whose
        client went away releases the key, so the retry runs again (and only it is billed in full).
        """
        decision = self.route(call)
        async with AsyncExitStack() as stages:
            hold = await stages.enter_async_context(self._hold(call))
            if hold.replay is not None:
                return hold.replay
            admitted = await stages.enter_async_context(self._admission(call, decision.policy))
            started = self.monotonic()
            routed, opened = await self._open_stream(admitted.call, decision, started)
            stages.push_async_callback(opened.close)
            handed_over = stages.pop_all()  # from here the relay (or abandon) ends the stages
        return _Streaming(self, hold, admitted, routed, opened, handed_over, started).reply()

    async def _open_stream(
        self, call: Call, decision: RouteDecision, started: float
    ) -> tuple[Routed, OpenedStream]:
        deadline = started + self.request_timeout_seconds

        async def open_stream(candidate: Candidate) -> OpenedStream:
            body = {**call.body, "model": candidate.backend_model, "stream_options": {"include_usage": True}}
            return await self.backends.open_stream(
                candidate.backend, self._request(call, candidate, body, deadline)
            )

        attempted = await self.dispatcher.call(decision, open_stream)
        return Routed.of(decision, attempted), attempted.result


class _Streaming:
    """One stream under way: its relay, and how it settles or is abandoned."""

    def __init__(
        self,
        pipeline: Pipeline,
        hold: IdempotencyHold,
        admitted: Admission,
        routed: Routed,
        opened: OpenedStream,
        stages: AsyncExitStack,
        started: float,
    ) -> None:
        self.pipeline = pipeline
        self.hold = hold
        self.admitted = admitted
        self.routed = routed
        self.opened = opened
        self.stages = stages
        self.started = started
        self.relaying = False
        self.headers = {**routed.headers, **admitted.headers}

    def reply(self) -> StreamingReply:
        call = self.admitted.call
        wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        events = relay(
            self._events(),
            self._settle,
            wants_usage=wants_usage,
            keep_transcript=self.hold.call.idempotency_key is not None,
            max_transcript_bytes=self.pipeline.max_stored_stream_bytes,
        )
        return StreamingReply(self.headers, events, self._abandon, self.routed.served_by)

    async def _events(self) -> AsyncGenerator[bytes, None]:
        self.relaying = True
        async for event in self.opened:
            yield event

    async def _settle(self, outcome: RelayOutcome) -> None:
        pipeline, call, routed = self.pipeline, self.admitted.call, self.routed
        if outcome.broken:
            pipeline.dispatcher.health.record_failure(routed.backend.id, routed.policy.failover_threshold)
        if outcome.failure is not None:
            log.warning("backend_stream_broken", backend=routed.backend.id)
        async with self.stages:
            await self.opened.close()
            tracker = outcome.tracker
            reported = tracker.usage()
            usage = (
                Usage(reported.prompt_tokens, reported.completion_tokens)
                if reported is not None
                else Usage(
                    prompt_estimate(call.kind, call.body), estimate_tokens(tracker.text), estimated=True
                )
            )
            cost = cost_micro_usd(routed.policy.pricing, usage.tokens_input, usage.tokens_output)
            elapsed = int((pipeline.monotonic() - self.started) * 1000)
            finished = outcome.finished
            try:
                await pipeline.account(
                    self.admitted,
                    Completed(routed, {}, b"", usage, cost, elapsed),
                    outcome.status,
                    record_id=self.hold.record_id if finished else None,
                )
            except ApiError:
                finished = False  # logged; the answer was relayed, so only its replay is withheld
            if finished and outcome.transcript is not None:
                self.hold.keep(FinalReply(200, outcome.transcript, "text/event-stream", self.headers))

    async def _abandon(self) -> None:
        """The client left before the first event was relayed: close the call, refund, free the key."""
        if not self.relaying:
            await self.stages.aclose()


def _dumps(document: dict[str, Any]) -> bytes:
    """orjson, except for documents it cannot encode: clients may send integers beyond 64 bits
    in fields we pass through, which standard JSON allows."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
