"""The request pipeline for completions, in order, in one readable place.

authorise model -> resolve policy -> idempotency begin -> rate limits and budget reservation
-> pick backend -> call (or stream) -> usage (tokens, cost) -> settle the budget (refund on failure)
-> usage record and audit event -> render -> idempotency complete.

Transport-free: handlers translate HTTP to a ``Call`` and a ``FinalReply`` back.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import structlog
from router_contract.models import UsageRecord

from router_impl.auth.authenticator import Authenticator, Principal
from router_impl.config.model import BackendConfig, ModelPolicy, RuntimeConfig
from router_impl.errors import ApiError
from router_impl.errors import render as render_error
from router_impl.limits.idempotency import (
    IdempotencyStore,
    IdempotencyUnavailable,
    Proceed,
    Replay,
    StoredReply,
    request_fingerprint,
)
from router_impl.limits.service import Demand, LimitDenied, LimitsService, Ticket
from router_impl.routing.backend_client import BackendClient, BackendReply, StreamBroken
from router_impl.routing.backend_stream import BackendEvents, BackendStream
from router_impl.routing.decisions import DecisionLog, RoutingDecisionRecord
from router_impl.routing.dispatcher import Attempted, Dispatcher
from router_impl.routing.engine import Candidate, RouteDecision, RouteReason, RouteRequest, RoutingEngine
from router_impl.routing.sse import StreamUsageTracker
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.audit import AuditEvent, AuditLog
from router_impl.usage.cost import cost_micro_usd, micro_to_usd
from router_impl.usage.outbox import OutboxError
from router_impl.usage.record import Usage, UsageFacts, build_record
from router_impl.usage.sink import UsageSink
from router_impl.usage.tokens import estimate, estimate_tokens, prompt_bound, prompt_estimate, usage_of

Kind = Literal["chat", "completion", "embedding"]
BACKEND_PATHS: dict[Kind, str] = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embedding": "/embeddings",
}
_RETRY_REPLAY_HEADER = ("Idempotent-Replayed", "true")
_COMPLETED_RECORD_IDS = uuid.UUID("5c1e8f3a-7d7b-4c55-9a8e-2f0b7f6d4e21")  # uuid5 namespace
# A non-streamed request holds its idempotency key until its backend deadline plus this (the usage
# record and the stored reply are written after the call); a retry may take the key over afterwards.
_SETTLE_MARGIN_SECONDS = 5.0

log = structlog.get_logger("router.pipeline")


@dataclass(frozen=True)
class Call:
    principal: Principal
    kind: Kind
    body: dict[str, Any]
    endpoint: str
    fingerprint: str
    idempotency_key: str | None
    request_id: str
    trace_id: str
    span_id: str

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def stream(self) -> bool:
        return self.kind != "embedding" and bool(self.body.get("stream"))


@dataclass(frozen=True)
class Routed:
    """Where a request was served: the backend that answered, why, and after how many calls."""

    policy: ModelPolicy
    backend: BackendConfig
    backend_model: str
    decision: RouteReason
    warning: str | None = None
    attempts: int = 1

    @classmethod
    def of(cls, decision: RouteDecision, attempted: Attempted[Any]) -> Routed:
        candidate = attempted.candidate
        return cls(
            decision.policy,
            candidate.backend,
            candidate.backend_model,
            decision.reason_at(attempted.index),
            decision.warning_at(attempted.index),
            attempted.attempts,
        )


@dataclass(frozen=True)
class Completed:
    """A backend answer, parsed, with its usage and what it cost."""

    routed: Routed
    payload: dict[str, Any]
    raw: bytes
    usage: Usage
    cost_micro_usd: int
    latency_ms: int


@dataclass(frozen=True)
class FinalReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamingReply:
    headers: dict[str, str]
    events: AsyncGenerator[bytes, None]
    # Called once the response is over; undoes what a relay that never started still holds.
    abandon: Callable[[], Awaitable[None]]


fingerprint = request_fingerprint


class Pipeline:
    def __init__(
        self,
        *,
        config: Callable[[], RuntimeConfig],
        authenticator: Authenticator,
        backends: BackendClient,
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
        audit: AuditLog | None = None,
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
        self.usage = usage
        self.now = now
        self.monotonic = monotonic
        self.max_stored_stream_bytes = max_stored_stream_bytes
        self.limits = limits
        self.audit = audit
        self.accepting = accepting  # False while the usage outbox is full: billable work is refused
        self.on_routed = on_routed  # (model, decision) per served request (metrics)
        self.tracer = tracer or Tracing()  # spans: route, limits, usage.write (off: no-ops)

    # ------------------------------------------------------------------ routing

    def route(self, call: Call) -> RouteDecision:
        """The ordered candidates for this request (weights, health, kill switches, org policy)."""
        with self.tracer.span("route") as span:
            snapshot = self.config()
            policy = snapshot.policy_for(call.model)
            if policy is None:
                available = ", ".join(sorted(self.model_names(call.principal))) or "none"
                raise ApiError(
                    "MODEL_NOT_FOUND", f"Unknown model '{call.model}'. Available models: {available}."
                )
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

    # ------------------------------------------------------------------ non-streaming

    async def complete(self, call: Call, render: Callable[[Call, Completed], FinalReply]) -> FinalReply:
        """One completion; a retried idempotency key replays the stored reply and is not billed."""
        decision = self.route(call)
        began = await self._begin(call, self.request_timeout_seconds + _SETTLE_MARGIN_SECONDS)
        if isinstance(began, FinalReply):
            return began
        try:
            with self.tracer.span("limits"):
                call, ticket = await self._admit(call, decision.policy)
            try:
                completed = await self._call_backend(call, decision)
            except BaseException:
                await self._refund(ticket)
                raise
            reply = render(call, completed)
            if ticket is not None and ticket.headers:
                reply = replace(reply, headers={**reply.headers, **ticket.headers})
            await self._account(
                call,
                completed,
                reply.status,
                stream=False,
                ticket=ticket,
                record_id=_completed_record_id(call),
            )
        except BaseException:
            await self._release(call, began)
            raise
        await self._store(call, began, reply)
        return reply

    # ------------------------------------------------------------------ limits

    async def _admit(self, call: Call, policy: ModelPolicy) -> tuple[Call, Ticket | None]:
        """Rate limits and budget reservation; the call's max_tokens clamped to the cap. Refused first
        while the usage outbox is full: a request is never served without its usage record."""
        if not self.accepting():
            log.error("usage_outbox_full_refusing", request_id=call.request_id)
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Usage accounting is backlogged; billable requests are refused until it drains.",
                headers={"Retry-After": "30"},
            )
        if self.limits is None:
            return call, None
        body = call.body
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        asked = body.get(name)
        choices = body.get("n")
        template = policy.prompt_template_tokens
        demand = Demand(
            organization_id=call.principal.organization_id,
            key_id=call.principal.key_id,
            prompt_tokens=prompt_estimate(call.kind, body),
            prompt_bound=prompt_bound(body, template.per_message, template.per_request),
            max_tokens=asked if isinstance(asked, int) and not isinstance(asked, bool) else None,
            pricing=policy.pricing,
            choices=choices
            if isinstance(choices, int) and not isinstance(choices, bool) and choices > 0
            else 1,
            stream=call.stream,
            completes=call.kind != "embedding",
        )
        try:
            ticket = await self.limits.admit(demand)
        except LimitDenied as denied:
            await self._denied(call, policy, denied)
            raise
        if ticket is not None and ticket.max_tokens is not None:
            call = replace(call, body={**body, name: ticket.max_tokens})
        return call, ticket

    async def _refund(self, ticket: Ticket | None) -> None:
        if ticket is not None and self.limits is not None:
            await self.limits.refund(ticket)

    async def _denied(self, call: Call, policy: ModelPolicy, denied: LimitDenied) -> None:
        """A denial is accounted for too: a usage record with its limit state, an audit event."""
        now = self.now()
        facts = UsageFacts(
            request_id=call.request_id,
            organization_id=call.principal.organization_id,
            api_key_id=call.principal.key_id,
            model=policy.model,
            backend_id="",
            usage=Usage(0, 0),
            latency_ms=0,
            cost_micro_usd=0,
            decision_reason="RATE_LIMIT",  # rate limit or budget: limit_state and denial_code tell which
            endpoint=call.endpoint,
            status_code=denied.status_code,
            stream=call.stream,
            trace_id=call.trace_id,
            span_id=call.span_id,
            timestamp=now,
            limit_state=denied.limit_state,
            metadata={"denial_code": denied.code, "limit_scope": denied.scope},
        )
        await self._emit(
            build_record(facts),
            AuditEvent(
                request_id=call.request_id,
                organization_id=call.principal.organization_id,
                api_key_id=call.principal.key_id,
                action="REQUEST_DENIED",
                decision_reason=denied.code,
                timestamp=now,
                limit_state=denied.limit_state,
                trace_id=call.trace_id,
                metadata={"model": policy.model, "scope": denied.scope, "endpoint": call.endpoint},
            ),
        )

    async def _emit(self, record: UsageRecord, event: AuditEvent) -> None:
        """The usage record and the audit event, written together (they share one group commit)."""
        with self.tracer.span("usage.write", {"router.audit.action": event.action}):
            await asyncio.gather(self._write_usage(record), self._audit(event))

    async def _write_usage(self, record: UsageRecord) -> None:
        try:
            await self.usage.emit(record)
        except OutboxError as exc:
            log.error("usage_record_not_stored", request_id=record.request_id, error=str(exc)[:200])
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                "Usage accounting is unavailable, so the request is not billed; retry later.",
                headers={"Retry-After": "5"},
            ) from exc

    async def record_audit(self, event: AuditEvent) -> None:
        """Admin actions are audited through the same writer (never fatal to the action)."""
        await self._audit(event)

    async def _audit(self, event: AuditEvent) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.record(event)
        except Exception as exc:  # the request happened; a lost audit write must be seen, not fatal
            log.error(
                "audit_write_failed", action=event.action, request_id=event.request_id, error=str(exc)[:200]
            )

    async def _begin(self, call: Call, within_seconds: float | None = None) -> FinalReply | str | None:
        """The stored reply for a retry, else the token that holds the key (None without a key).
        ``within_seconds``: the request ends by then, so a retry may take the key over afterwards."""
        if call.idempotency_key is None:
            return None
        now = self.now()
        deadline = None if within_seconds is None else now + timedelta(seconds=within_seconds)
        try:
            began = await self.idempotency.begin(
                call.principal.organization_id, call.idempotency_key, call.fingerprint, now, deadline
            )
        except IdempotencyUnavailable as exc:
            log.error("idempotency_unavailable", error=str(exc)[:200])
            raise ApiError("SERVICE_UNAVAILABLE", "Idempotency store unavailable; retry later.") from exc
        if isinstance(began, Replay):
            return _replayed(began.reply)
        if not isinstance(began, Proceed):
            raise began.error()
        return began.token

    async def _release(self, call: Call, token: str | None) -> None:
        if token is None or call.idempotency_key is None:
            return
        try:
            await self.idempotency.release(call.principal.organization_id, call.idempotency_key, token)
        except IdempotencyUnavailable as exc:  # the lease expires by itself
            log.warning("idempotency_release_failed", error=str(exc)[:200], request_id=call.request_id)

    async def _store(self, call: Call, token: str | None, reply: FinalReply) -> None:
        if token is None or call.idempotency_key is None:
            return
        stored = StoredReply(
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type,
            headers=tuple(reply.headers.items()),
        )
        try:
            await self.idempotency.complete(
                call.principal.organization_id, call.idempotency_key, token, stored, self.now()
            )
        except IdempotencyUnavailable as exc:
            # The client still gets its (billed) reply; a retry after the lease would run again.
            log.error("idempotency_complete_failed", error=str(exc)[:200], request_id=call.request_id)

    async def _call_backend(self, call: Call, decision: RouteDecision) -> Completed:
        started = self.monotonic()
        deadline = started + self.request_timeout_seconds

        async def send(candidate: Candidate) -> BackendReply:
            return await self.backends.post_json(
                candidate.backend,
                BACKEND_PATHS[call.kind],
                _dumps({**call.body, "model": candidate.backend_model}),
                traceparent=self.tracer.traceparent(call.trace_id, call.span_id),  # the attempt's span
                request_id=call.request_id,
                deadline=deadline,
            )

        attempted = await self.dispatcher.call(decision, send)
        routed, answer = Routed.of(decision, attempted), attempted.result
        payload = answer.document
        usage = usage_of(payload) or estimate(call.kind, call.body, payload)
        latency_ms = int((self.monotonic() - started) * 1000)
        cost = cost_micro_usd(routed.policy.pricing, usage.tokens_input, usage.tokens_output)
        return Completed(routed, payload, answer.body, usage, cost, latency_ms)

    async def _account(
        self,
        call: Call,
        completed: Completed,
        status: int,
        *,
        stream: bool,
        ticket: Ticket | None,
        record_id: uuid.UUID | None = None,
    ) -> None:
        if ticket is not None and self.limits is not None:
            tokens = completed.usage.tokens_input + completed.usage.tokens_output
            await self.limits.settle(ticket, tokens, completed.cost_micro_usd)
        snapshot, budget_metadata = _budget_after(ticket, completed)
        facts = UsageFacts(
            request_id=call.request_id,
            organization_id=call.principal.organization_id,
            api_key_id=call.principal.key_id,
            model=completed.routed.policy.model,
            backend_id=completed.routed.backend.id,
            usage=completed.usage,
            latency_ms=completed.latency_ms,
            cost_micro_usd=completed.cost_micro_usd,
            decision_reason=completed.routed.decision,
            retry_count=completed.routed.attempts - 1,
            endpoint=call.endpoint,
            status_code=status,
            stream=stream,
            trace_id=call.trace_id,
            span_id=call.span_id,
            timestamp=self.now(),
            budget_snapshot=snapshot,
            metadata=budget_metadata,
            record_id=record_id,
        )
        routed = completed.routed
        if self.on_routed is not None:
            self.on_routed(routed.policy.model, routed.decision)
        self.decisions.record(
            RoutingDecisionRecord(
                request_id=call.request_id,
                timestamp=facts.timestamp,
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
        await self._emit(
            build_record(facts),
            AuditEvent(
                request_id=call.request_id,
                organization_id=call.principal.organization_id,
                api_key_id=call.principal.key_id,
                action="REQUEST_ALLOWED",
                decision_reason=routed.decision,
                timestamp=facts.timestamp,
                routing_backend_id=routed.backend.id,
                trace_id=call.trace_id,
                completed_at=facts.timestamp,
                metadata={"model": routed.policy.model, "status": str(status), "endpoint": call.endpoint},
            ),
        )

    # ------------------------------------------------------------------ streaming

    async def stream(self, call: Call) -> StreamingReply | FinalReply:
        """Server-sent events passed through chunk by chunk; usage taken from the final chunk.

        With an idempotency key, the transcript of a finished stream is stored (up to
        ``max_stored_stream_bytes``) and a retry replays it whole; a stream that broke or whose
        client went away releases the key, so the retry runs again (and only it is billed in full).
        """
        decision = self.route(call)
        began = await self._begin(call)
        if isinstance(began, FinalReply):
            return began
        try:
            with self.tracer.span("limits"):
                call, ticket = await self._admit(call, decision.policy)
        except BaseException:
            await self._release(call, began)
            raise
        wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        started = self.monotonic()
        deadline = started + self.request_timeout_seconds

        async def open_stream(candidate: Candidate) -> tuple[BackendStream, BackendEvents]:
            body = {**call.body, "model": candidate.backend_model, "stream_options": {"include_usage": True}}
            opened = self.backends.stream(
                candidate.backend,
                BACKEND_PATHS[call.kind],
                _dumps(body),
                traceparent=self.tracer.traceparent(call.trace_id, call.span_id),  # the attempt's span
                request_id=call.request_id,
                deadline=deadline,
            )
            return opened, await opened.__aenter__()  # errors before the first byte surface here

        try:
            attempted = await self.dispatcher.call(decision, open_stream)
        except BaseException:
            await self._refund(ticket)
            await self._release(call, began)
            raise
        routed = Routed.of(decision, attempted)
        opened, events = attempted.result
        tracker = StreamUsageTracker()
        headers = routing_headers(routed)
        if ticket is not None:
            headers.update(ticket.headers)

        started_relay = False

        async def relay() -> AsyncGenerator[bytes, None]:
            """Events pass through one behind: the last is held until the usage record is committed
            (and the transcript stored), so a client that saw the end can rely on both."""
            nonlocal started_relay
            started_relay = True
            status, finished, settled = 200, False, False
            transcript: list[bytes] | None = [] if began is not None else None
            kept = 0

            async def settle() -> None:
                nonlocal settled, finished
                settled = True
                await opened.__aexit__(None, None, None)
                reported = tracker.usage()
                usage = (
                    Usage(reported.prompt_tokens, reported.completion_tokens)
                    if reported is not None
                    else Usage(
                        prompt_estimate(call.kind, call.body), estimate_tokens(tracker.text), estimated=True
                    )
                )
                cost = cost_micro_usd(routed.policy.pricing, usage.tokens_input, usage.tokens_output)
                elapsed = int((self.monotonic() - started) * 1000)
                try:
                    await self._account(
                        call,
                        Completed(routed, {}, b"", usage, cost, elapsed),
                        status,
                        stream=True,
                        ticket=ticket,
                        record_id=_completed_record_id(call) if finished else None,
                    )
                except ApiError:
                    finished = False  # logged; the answer was relayed, so only its replay is withheld
                if finished and transcript is not None:
                    reply = FinalReply(200, b"".join(transcript), "text/event-stream", headers)
                    await self._store(call, began, reply)
                else:
                    await self._release(call, began)

            held: bytes | None = None
            try:
                failure: ApiError | None = None
                try:
                    async for event in events:
                        tracker.feed(event)
                        if tracker.last_was_usage_only and not wants_usage:
                            continue
                        if transcript is not None:
                            kept += len(event)
                            transcript = transcript if kept <= self.max_stored_stream_bytes else None
                            if transcript is not None:
                                transcript.append(event)
                        if held is not None:
                            yield held
                        held = event
                except StreamBroken as exc:
                    self.dispatcher.health.record_failure(routed.backend.id, routed.policy.failover_threshold)
                    code = "BACKEND_TIMEOUT" if "Timeout" in exc.reason else "BACKEND_ERROR"
                    failure = ApiError(code, "The backend stream broke before the answer was complete.")
                else:
                    if not tracker.done:
                        failure = ApiError(
                            "BACKEND_ERROR", "The backend ended the stream before it was complete."
                        )
                if failure is None:
                    finished = True
                else:
                    status = failure.status_code
                    log.warning(
                        "backend_stream_broken", backend=routed.backend.id, request_id=call.request_id
                    )
                await settle()
                if held is not None:
                    yield held
                if failure is not None:
                    # OpenAI's clients raise on an error event; without it a cut answer looks complete.
                    yield (
                        b"data: "
                        + render_error(failure, trace_id=call.trace_id, request_id=None, openai=True)
                        + b"\n\n"
                    )
            finally:
                if not settled:  # the client went away mid-stream
                    finished = False
                    await settle()

        async def abandon() -> None:
            """The client left before the first event was relayed: close the call, free the key."""
            if not started_relay:
                await opened.__aexit__(None, None, None)
                await self._refund(ticket)
                await self._release(call, began)

        return StreamingReply(headers=headers, events=relay(), abandon=abandon)


def routing_headers(routed: Routed) -> dict[str, str]:
    headers = {"X-Routing-Backend": routed.backend.id, "X-Routing-Decision": routed.decision}
    if routed.warning:
        headers["X-Routing-Warning"] = routed.warning
    return headers


def _budget_after(
    ticket: Ticket | None, completed: Completed
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The usage record's budget snapshot: the tightest period's room once the reservation settled.

    The schema's snapshot needs both figures; a period that budgets only one of tokens and USD has
    no snapshot, and its one figure goes into metadata (budget_period, budget_*_remaining).
    """
    if ticket is None or ticket.budget is None:
        return None, {}
    view = ticket.budget
    snapshot: dict[str, Any] = {"period": view.period}
    if view.tokens_remaining is not None:
        tokens = completed.usage.tokens_input + completed.usage.tokens_output
        snapshot["tokens_remaining"] = max(0, view.tokens_remaining + ticket.reserved_tokens - tokens)
    if view.micro_usd_remaining is not None:
        left = view.micro_usd_remaining + ticket.reserved_micro_usd - completed.cost_micro_usd
        snapshot["currency_remaining"] = micro_to_usd(max(0, left))
    if len(snapshot) == 3:
        return snapshot, {}
    return None, {f"budget_{name}": str(value) for name, value in snapshot.items()}


def _completed_record_id(call: Call) -> uuid.UUID | None:
    """The usage record id of a completed idempotent request: derived from its key, so that when the
    key's stored reply is lost (the router died between committing the record and storing the reply,
    or the store failed) the retry that runs again yields the same record_id, which consumers
    de-duplicate: billed once. Denials, failures and broken streams keep random ids (each is billed
    on its own, and the key is released for the retry)."""
    if call.idempotency_key is None:
        return None
    scope = f"{call.principal.organization_id}\x00{call.idempotency_key}\x00{call.fingerprint}"
    return uuid.uuid5(_COMPLETED_RECORD_IDS, scope)


def _replayed(reply: StoredReply) -> FinalReply:
    headers = dict(reply.headers)
    headers[_RETRY_REPLAY_HEADER[0]] = _RETRY_REPLAY_HEADER[1]
    return FinalReply(status=reply.status, body=reply.body, content_type=reply.content_type, headers=headers)


def _dumps(document: dict[str, Any]) -> bytes:
    """orjson, except for documents it cannot encode: clients may send integers beyond 64 bits
    in fields we pass through, which standard JSON allows."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
