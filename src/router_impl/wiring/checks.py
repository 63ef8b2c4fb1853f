"""Wiring of the health endpoints' checks (liveness, readiness with each dependency) and of the
state gauges the metrics endpoint samples."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime

from router_impl.auth.identity import IdentityServiceKeyStore
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.config.model import RuntimeConfig
from router_impl.config.service import ConfigService
from router_impl.limits.service import LimitsService
from router_impl.process_health import BuildInfo, CheckStatus, HealthCheck, HealthService
from router_impl.routing.health import BackendHealth
from router_impl.routing.readiness import BackendReadiness, credentials_check, keys_check, usable_keys
from router_impl.settings import Settings
from router_impl.telemetry.metrics import BackendSample, Sample
from router_impl.usage.wiring import UsageParts


def build_health(
    settings: Settings,
    service: ConfigService,
    identity: IdentityServiceKeyStore | None,
    shared_stores: list[HealthCheck],
    usage: UsageParts,
    backends: Callable[[], BackendReadiness],
    config: Callable[[], RuntimeConfig],
    keys: ConfigKeyStore | None,  # None: the identity service holds them, uncounted
) -> HealthService:
    async def process() -> tuple[CheckStatus, str]:
        return "pass", "serving"

    async def backend_check() -> tuple[CheckStatus, str]:
        usable = usable_keys(keys.records(), datetime.now(UTC)) if keys is not None else None
        return backends().check(usable is None or any("admin" in k.scopes for k in usable))

    async def key_check() -> tuple[CheckStatus, str]:
        return keys_check(keys.records() if keys is not None else (), datetime.now(UTC))

    async def credentials() -> tuple[CheckStatus, str]:
        return credentials_check(config(), os.environ)

    def backend_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
        found = backends()
        return found.ready, found.degraded

    checks = [
        HealthCheck("process", process),
        HealthCheck("config", service.readiness),
        *shared_stores,
        HealthCheck("usage_outbox", usage.readiness),
        HealthCheck("backends", backend_check),
        HealthCheck("credentials", credentials),
        *([HealthCheck("keys", key_check)] if keys is not None else []),
    ]
    if identity is not None:

        async def identity_service() -> tuple[CheckStatus, str]:
            if identity.degraded:
                return (
                    "warn",
                    f"identity service unreachable; serving cached keys ({identity.stale_served} stale)",
                )
            return "pass", "identity service reachable"

        checks.append(HealthCheck("identity", identity_service))
    return HealthService(
        build=BuildInfo(settings.build_version, settings.build_commit, settings.build_time),
        liveness=[HealthCheck("process", process)],
        readiness=checks,
        backends=backend_lists,
    )


def state_sample(
    config: RuntimeConfig,
    health: BackendHealth,
    usage: UsageParts,
    service: ConfigService,
    limits: LimitsService,
) -> Sample:
    """The state gauges: backends (serviceable, breaker), outbox backlog, applied config, Redis."""
    backends = []
    for backend in config.backends:
        breaker = health.breaker_state(backend.id)
        usable = health.availability(backend.id, 0).usable and config.state_of(backend.id).state != "disabled"
        backends.append(BackendSample(backend.id, usable, breaker))
    backlog = usage.outbox.backlog()
    return Sample(
        backends=tuple(backends),
        outbox_records=backlog.count,
        outbox_bytes=backlog.stored_bytes,
        outbox_oldest_age_seconds=backlog.oldest_age_seconds,
        config_revision=service.revision or 0,
        config_applied_at=service.applied_at.timestamp() if service.applied_at else 0.0,
        config_rejected=service.rejected,
        limits_store_up=limits.degraded is None,
    )
