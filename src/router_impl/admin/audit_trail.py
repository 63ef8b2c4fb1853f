"""Who asked for an admin change, the audit event that records it, and the change logged and audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from router_impl.usage.audit import AuditAction, AuditEvent

log = structlog.get_logger("router.admin")

# Writes one audit event; never fatal to the change (the writer logs its own failures).
RecordAudit = Callable[[AuditEvent], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    """The administrator behind a change: their key id (None when unknown) and the request's ids."""

    actor: str | None
    request_id: str
    trace_id: str | None = None

    def event(
        self,
        action: AuditAction,
        reason: str,
        at: datetime,
        *,
        organization_id: str = "",
        metadata: dict[str, str] | None = None,
    ) -> AuditEvent:
        """The audit event of this caller's change (``reason`` cut to the contract's 500)."""
        return AuditEvent(
            request_id=self.request_id,
            organization_id=organization_id,
            api_key_id=self.actor or "",
            action=action,
            decision_reason=reason[:500],
            timestamp=at,
            actor=self.actor,
            trace_id=self.trace_id,
            metadata=metadata or {},
        )


async def record_change(
    record_audit: RecordAudit, event: AuditEvent, log_event: str, **logged: object
) -> None:
    """One admin change, logged (``log_event``: the actor and ``logged``, ids only) and audited."""
    log.info(log_event, actor_key_id=event.actor, **logged)
    await record_audit(event)
