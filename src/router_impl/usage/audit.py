"""The audit trail port (FR-14): durable events for allow/deny decisions, policy changes, limit resets.

One ``AuditEvent`` per fact, stored by an adapter (LMDB embedded, Redis shared by replicas) and
forwarded to Kafka ``audit.events.v1`` through the usage outbox. The fields are the contract's
``AuditRecord``; ``audit_record_json`` is the one wire form (API item, stored value, Kafka message).
Writers never wait on Kafka; a store failure is the caller's to log (an audit write must not fail a
request that already happened).

Order is newest first by ``(timestamp in ms, event_id)``; a page's cursor is the position of its last
item, so pages stay stable while newer events arrive.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import orjson
from router_contract.models import AuditRecord

from router_impl.ids import random_uuid4

AuditAction = Literal[
    "REQUEST_ALLOWED", "REQUEST_DENIED", "POLICY_UPDATE", "LIMIT_RESET", "KEY_CREATED", "KEY_REVOKED"
]
AuditLimitState = Literal["WITHIN_LIMIT", "RATE_LIMITED", "BUDGET_EXCEEDED"]

DEFAULT_RETENTION_SECONDS = 30 * 86_400
MAX_PAGE = 1000
_REASON_MAX = 500  # the contract's maxLength of decision_reason
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def new_event_id() -> str:
    return random_uuid4().hex


@dataclass(frozen=True)
class AuditEvent:
    """One fact. Ids follow the contract's ``Identifier`` pattern; ``record`` refuses an event the
    contract cannot carry (ValueError), so nothing unreadable is ever stored or forwarded."""

    request_id: str  # the request decided on, or the admin request that changed something
    organization_id: str  # "" when the caller was not authenticated
    api_key_id: str  # "" when the caller was not authenticated
    action: AuditAction
    decision_reason: str  # an ErrorCode for denials, the routing decision when allowed, the change for admin
    timestamp: datetime  # aware, UTC
    limit_state: AuditLimitState = "WITHIN_LIMIT"
    routing_backend_id: str | None = None
    actor: str | None = None  # administrator's key id (POLICY_UPDATE, LIMIT_RESET)
    trace_id: str | None = None
    received_at: datetime | None = None
    completed_at: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True)
class AuditQuery:
    organization_id: str | None  # None: every organisation (admins only; the handler decides)
    action: AuditAction | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int = 100  # 1..MAX_PAGE
    cursor: str | None = None  # opaque, from a previous page's next_cursor


@dataclass(frozen=True)
class AuditPage:
    items: tuple[AuditEvent, ...]  # newest first
    next_cursor: str | None  # None on the last page


class AuditUnavailable(RuntimeError):
    """The audit store failed."""


class InvalidCursor(ValueError):
    """A cursor no store issued (it matches no position)."""


class AuditLog(Protocol):
    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        """Store one event; AuditUnavailable when the store fails, ValueError for an event the
        contract cannot carry. ``data`` is the event's ``audit_record_json`` when the caller
        already has it."""
        ...

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        """The request's record: its latest event (a denial, or the allowed request).
        ``organization_id`` restricts the lookup to that organisation (None: any)."""
        ...

    async def query(self, query: AuditQuery) -> AuditPage:
        """One page, newest first; InvalidCursor for a cursor no store issued."""
        ...


# ---------------------------------------------------------------- time and order


def to_ms(moment: datetime) -> int:
    """Unix milliseconds, never negative (a time without a zone is UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return max((aware - _EPOCH) // _MS, 0)


def position(event: AuditEvent) -> tuple[int, str]:
    """Where the event sorts: by time, then by id (so equal timestamps still have one order)."""
    return to_ms(event.timestamp), event.event_id


def retention_cutoff_ms(now: float, retention_seconds: float) -> int:
    """Events older than this (Unix ms) are past retention."""
    return max(int((now - retention_seconds) * 1000), 0)


def page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be within 1..{MAX_PAGE}")
    return limit


def encode_cursor(at: tuple[int, str]) -> str:
    """base64url without padding: inside the contract's cursor pattern ``[A-Za-z0-9._~=-]``."""
    raw = f"{at[0]}.{at[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The position ``encode_cursor`` wrote; InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("not an audit cursor") from exc
    millis, dot, event_id = raw.partition(".")
    if not dot or not millis.isdigit() or not event_id or len(millis) > 15:
        raise InvalidCursor("not an audit cursor")
    return int(millis), event_id


# ---------------------------------------------------------------- the wire form


def _iso(moment: datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def audit_record(event: AuditEvent) -> dict[str, Any]:
    """The contract's ``AuditRecord`` document (optional fields absent when unknown)."""
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "request_id": event.request_id,
        "organization_id": event.organization_id,
        "api_key_id": event.api_key_id,
        "action": event.action,
        "decision_reason": event.decision_reason[:_REASON_MAX],
        "limit_state": event.limit_state,
        "timestamp": _iso(event.timestamp),
    }
    if event.routing_backend_id is not None:
        record["routing_backend_id"] = event.routing_backend_id
    if event.actor is not None:
        record["actor"] = event.actor
    if event.trace_id is not None:
        record["trace_id"] = event.trace_id
    if event.received_at is not None:
        record["received_at"] = _iso(event.received_at)
    if event.completed_at is not None:
        record["completed_at"] = _iso(event.completed_at)
    if event.metadata:
        record["metadata"] = dict(event.metadata)
    return record


def audit_record_json(event: AuditEvent) -> bytes:
    """The event as AuditRecord JSON, validated against the generated model (ValueError if it breaks
    the contract): the stored value and the Kafka ``audit.events.v1`` message."""
    record = audit_record(event)
    AuditRecord.model_validate(record)
    return orjson.dumps(record)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def event_from_json(data: bytes | str) -> AuditEvent:
    """The event ``audit_record_json`` wrote; ValueError for anything else."""
    try:
        record = orjson.loads(data)
        return AuditEvent(
            event_id=record["event_id"],
            request_id=record["request_id"],
            organization_id=record["organization_id"],
            api_key_id=record["api_key_id"],
            action=record["action"],
            decision_reason=record["decision_reason"],
            limit_state=record["limit_state"],
            timestamp=datetime.fromisoformat(record["timestamp"]),
            routing_backend_id=record.get("routing_backend_id"),
            actor=record.get("actor"),
            trace_id=record.get("trace_id"),
            received_at=_time(record.get("received_at")),
            completed_at=_time(record.get("completed_at")),
            metadata=dict(record.get("metadata") or {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed audit event: {exc}") from exc


class ForwardedAuditLog:
    """An audit store whose every event is also committed to the usage outbox, on its way to
    Kafka ``audit.events.v1`` (keyed by organisation). Reads go to the store."""

    def __init__(self, store: AuditLog, forward: Callable[[bytes, bytes], Awaitable[None]]) -> None:
        self.store = store
        self.forward = forward

    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        data = data or audit_record_json(event)  # encoded (and validated) once for both copies
        # Both writes at once with one task, not gather's two (the forward's commit is the longer wait).
        forwarded = asyncio.ensure_future(self.forward(event.organization_id.encode(), data))
        try:
            await self.store.record(event, data)
        finally:
            await forwarded

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        return await self.store.by_request(request_id, organization_id)

    async def query(self, query: AuditQuery) -> AuditPage:
        return await self.store.query(query)
