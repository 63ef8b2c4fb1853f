"""Wiring of the admin application services (config, organisation limits, API keys) on one clock
and one audit writer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from router_impl.admin.audit_trail import RecordAudit
from router_impl.admin.config_admin import ConfigAdministration
from router_impl.admin.config_writes import ConfigWriter
from router_impl.admin.key_admin import KeyAdministration
from router_impl.admin.limits_admin import LimitsAdministration
from router_impl.auth.admin import ApiKeyAdmin
from router_impl.limits.service import LimitsService
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.health import BackendHealth
from router_impl.wiring.config import ConfigParts


@dataclass(frozen=True)
class AdminServices:
    config: ConfigAdministration
    limits: LimitsAdministration
    keys: KeyAdministration


def build_admin(
    *,
    config: ConfigParts,
    limits: LimitsService,
    key_store: ApiKeyAdmin | None,
    health: BackendHealth,
    backends: BackendClient,
    record_audit: RecordAudit,
    now: Callable[[], datetime],
) -> AdminServices:
    writer = ConfigWriter(writes=config.service, record_audit=record_audit, now=now)
    return AdminServices(
        config=ConfigAdministration(
            config=config.holder.current,
            writer=writer,
            health=health,
            backends=backends,
            applied_at=lambda: config.service.applied_at,
            now=now,
        ),
        limits=LimitsAdministration(limits=limits, writer=writer, record_audit=record_audit, now=now),
        keys=KeyAdministration(store=key_store, record_audit=record_audit, now=now),
    )
