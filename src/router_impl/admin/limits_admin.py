"""Organisation-limit administration: write (audited) and apply new limits, read and reset counters.

Limits are config objects (``limits/<org>``); their live counters come from the limit store. A
reset is audited as ``LIMIT_RESET`` at the injected clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from router_impl import admin_views as views
from router_impl.admin.audit_trail import Caller, RecordAudit, record_change
from router_impl.admin.config_writes import ConfigWriter, invalid_object
from router_impl.config.model import OrgLimits
from router_impl.limits.service import LimitsService
from router_impl.limits.state import OrgState, ResetTarget


@dataclass(frozen=True)
class LimitsReset:
    cleared: tuple[str, ...]  # what was cleared, by name
    at: datetime


class LimitsAdministration:
    """An organisation's limits (the config object) and their live state."""

    def __init__(
        self,
        *,
        limits: LimitsService,
        writer: ConfigWriter,
        record_audit: RecordAudit,
        now: Callable[[], datetime],
    ) -> None:
        self.limits = limits
        self.writer = writer
        self.record_audit = record_audit
        self.now = now

    async def state(self, org_id: str) -> tuple[OrgLimits, OrgState]:
        return self.limits.limits_of(org_id) or OrgLimits(), await self.limits.state(org_id)

    async def replace(
        self, caller: Caller, org_id: str, document: Mapping[str, Any]
    ) -> tuple[OrgLimits, OrgState]:
        """PUT: ``document`` is the whole ``OrgLimits``."""
        try:
            limits = OrgLimits.model_validate(document)
        except ValidationError as exc:
            raise invalid_object(exc) from exc
        action = "replace" if self.limits.limits_of(org_id) is not None else "create"
        return await self._store(caller, action, org_id, limits)

    async def patch(
        self, caller: Caller, org_id: str, document: Mapping[str, Any]
    ) -> tuple[OrgLimits, OrgState]:
        """PATCH: ``document`` is a JSON merge patch of the current limits."""
        existing = self.limits.limits_of(org_id)
        try:
            limits = views.patched_limits(existing, document)
        except ValidationError as exc:
            raise invalid_object(exc) from exc
        return await self._store(caller, "patch" if existing is not None else "create", org_id, limits)

    async def _store(
        self, caller: Caller, action: str, org_id: str, limits: OrgLimits
    ) -> tuple[OrgLimits, OrgState]:
        """Writes (audited) and applies an organisation's new limits; PUT and PATCH alike."""
        await self.writer.put(
            caller,
            action,
            "limits",
            org_id,
            limits,
            invalid_as="VALIDATION_ERROR",
            conflict_as="SERVICE_UNAVAILABLE",
        )
        await self.limits.limits_changed(org_id)
        return limits, await self.limits.state(org_id)

    async def reset(
        self, caller: Caller, org_id: str, target: ResetTarget, key_id: str | None, reason: str
    ) -> LimitsReset:
        cleared = await self.limits.reset(org_id, target, key_id)
        now = self.now()
        metadata = {
            "scope": target,
            "cleared": ",".join(cleared)[:512],
            **({"key_id": key_id} if key_id else {}),
        }
        event = caller.event("LIMIT_RESET", reason, now, organization_id=org_id, metadata=metadata)
        await record_change(
            self.record_audit,
            event,
            "limit_reset",
            organization_id=org_id,
            scope=target,
            key_id=key_id,
            cleared=cleared,
        )
        return LimitsReset(cleared, now)
