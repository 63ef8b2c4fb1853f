"""The auditing service: writes one audit event; a lost write is logged, never fatal to what happened.

The request path (allowed and denied requests) and the admin operations (key, config and limit
changes) write through it. Without an audit log (``None``) it does nothing.
"""

from __future__ import annotations

import structlog

from router_impl.usage.audit import AuditEvent, AuditLog

log = structlog.get_logger("router.audit")


class Auditing:
    def __init__(self, audit_log: AuditLog | None) -> None:
        self.audit_log = audit_log

    async def record(self, event: AuditEvent) -> None:
        if self.audit_log is None:
            return
        try:
            await self.audit_log.record(event)
        except Exception as exc:  # the request happened; a lost audit write must be seen, not fatal
            log.error(
                "audit_write_failed", action=event.action, request_id=event.request_id, error=str(exc)[:200]
            )
