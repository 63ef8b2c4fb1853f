"""What flows through the request pipeline: the ``Call`` going in, what it was routed to and came to,
and the replies going back out (whole, or a stream of events ending in an optional typed failure)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from router_impl.auth.authenticator import Principal
from router_impl.config.model import BackendConfig, ModelPolicy
from router_impl.errors import ApiError
from router_impl.routing.backend_port import Kind
from router_impl.routing.dispatcher import Attempted
from router_impl.routing.engine import RouteDecision, RouteReason
from router_impl.usage.accounting import Requester
from router_impl.usage.record import Usage

__all__ = ["Call", "Completed", "FinalReply", "Kind", "Routed", "ServedBy", "StreamFailure", "StreamingReply"]


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

    @property
    def requester(self) -> Requester:
        return Requester(
            request_id=self.request_id,
            organization_id=self.principal.organization_id,
            api_key_id=self.principal.key_id,
            endpoint=self.endpoint,
            trace_id=self.trace_id,
            span_id=self.span_id,
            stream=self.stream,
        )


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

    @property
    def served_by(self) -> ServedBy:
        return self.backend.id, self.decision

    @property
    def headers(self) -> dict[str, str]:
        """X-Routing-Backend, X-Routing-Decision and (when a backend was impaired) X-Routing-Warning."""
        headers = {"X-Routing-Backend": self.backend.id, "X-Routing-Decision": self.decision}
        if self.warning:
            headers["X-Routing-Warning"] = self.warning
        return headers


@dataclass(frozen=True)
class Completed:
    """A backend answer, parsed, with its usage and what it cost."""

    routed: Routed
    payload: dict[str, Any]
    raw: bytes
    usage: Usage
    cost_micro_usd: int
    latency_ms: int


# (backend id, routing decision) of the backend that answered: what the access log and span report.
ServedBy = tuple[str, str]


@dataclass(frozen=True)
class FinalReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    served_by: ServedBy | None = None


@dataclass(frozen=True, slots=True)
class StreamFailure:
    """The last item of a stream that broke or ended early: the web layer renders it as the SSE
    error event OpenAI's clients raise on (without it a cut answer looks complete)."""

    error: ApiError


@dataclass
class StreamingReply:
    headers: dict[str, str]
    events: AsyncGenerator[bytes | StreamFailure, None]
    # Called once the response is over; undoes what a relay that never started still holds.
    abandon: Callable[[], Awaitable[None]]
    served_by: ServedBy | None = None
