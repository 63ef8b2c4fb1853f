"""The components one router process is built from; handlers receive them, never globals."""

from __future__ import annotations

from dataclasses import dataclass

from router_impl.admin.config_admin import ConfigAdministration
from router_impl.admin.key_admin import KeyAdministration
from router_impl.admin.limits_admin import LimitsAdministration
from router_impl.auth.authenticator import Authenticator
from router_impl.auth.identity import IdentityServiceKeyStore
from router_impl.auth.signature_gate import SignatureGate
from router_impl.config.holder import ConfigHolder
from router_impl.config.service import ConfigService
from router_impl.lifecycle import Lifecycle
from router_impl.limits.service import LimitsService
from router_impl.pipeline import Pipeline
from router_impl.process_health import HealthService
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.decisions import DecisionLog
from router_impl.routing.health import BackendHealth
from router_impl.settings import Settings
from router_impl.telemetry.metrics import Metrics
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.audit import AuditLog
from router_impl.usage.auditing import Auditing
from router_impl.web.probe_guard import ProbeGuard


@dataclass(frozen=True)
class Components:
    settings: Settings
    config: ConfigHolder
    authenticator: Authenticator
    signatures: SignatureGate
    key_admin: KeyAdministration  # answers 501 when an external identity service owns the keys
    config_admin: ConfigAdministration
    limits_admin: LimitsAdministration
    identity: IdentityServiceKeyStore | None
    health: HealthService
    pipeline: Pipeline
    config_service: ConfigService
    health_registry: BackendHealth
    backend_client: BackendClient
    decisions: DecisionLog
    lifecycle: Lifecycle
    started_at: int
    audit: AuditLog
    auditing: Auditing  # the writer: never fatal to what it records
    limits: LimitsService
    metrics: Metrics
    probe_guard: ProbeGuard
    tracing: Tracing
