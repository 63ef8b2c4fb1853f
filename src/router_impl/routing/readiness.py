"""Which backends can take traffic now, whether every model has one, and whether any key can get
in (for readiness): a router that no request could succeed on is not ready.

ready: usable (probe passing, breaker not open) and marked healthy by the operator; degraded:
usable but marked degraded, warming up or on a half-open trial. Disabled backends, open breakers
and failing probes are in neither list. Pure: the health registry and the snapshot come in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from router_impl.auth.keys import ApiKeyRecord
from router_impl.config.model import RuntimeConfig
from router_impl.process_health import CheckStatus
from router_impl.routing.backend_pool import bearer_token
from router_impl.routing.health import BackendHealth

_DEGRADED_REASONS = frozenset({"warming_up", "half_open", "trial_in_flight"})


@dataclass(frozen=True)
class BackendReadiness:
    ready: tuple[str, ...]
    degraded: tuple[str, ...]
    unserved_models: tuple[str, ...]  # enabled models with no ready or degraded backend
    models: int  # enabled models

    def check(self, admin_can_configure: bool = True) -> tuple[CheckStatus, str]:
        """fail when no model can be served, warn when some cannot (the others still can). With no
        model at all, warn while an admin key can add one through this router (it must stay in the
        Service for that), else fail."""
        if not self.models:
            if admin_can_configure:
                return "warn", "no models configured: inference requests get 404 until an admin adds one"
            return (
                "fail",
                "no models configured and no admin key to add one: no inference request can succeed",
            )
        if not self.unserved_models:
            return "pass", f"{len(self.ready)} ready, {len(self.degraded)} degraded backends"
        listed = ", ".join(self.unserved_models[:10])
        status: CheckStatus = "fail" if len(self.unserved_models) == self.models else "warn"
        return status, f"no available backend for model(s): {listed}"


def assess(config: RuntimeConfig, health: BackendHealth) -> BackendReadiness:
    ready: list[str] = []
    degraded: list[str] = []
    for backend in config.backends:
        state = config.state_of(backend.id).state
        if state == "disabled":
            continue
        warmups = [
            p.warmup_seconds for p in config.models if backend.id in {b.backend_id for b in p.backends}
        ]
        availability = health.availability(backend.id, max(warmups, default=0))
        if not availability.usable:
            continue
        if state == "degraded" or availability.reason in _DEGRADED_REASONS:
            degraded.append(backend.id)
        else:
            ready.append(backend.id)
    usable = set(ready) | set(degraded)
    enabled = [p for p in config.models if p.enabled]
    unserved = [
        p.model
        for p in enabled
        if not any(
            wb.backend_id in usable and wb.weight > 0
            for backends in (p.backends, *(o.backends for o in p.org_overrides.values()))
            for wb in backends
        )
    ]
    return BackendReadiness(tuple(ready), tuple(degraded), tuple(unserved), len(enabled))


def credentials_check(config: RuntimeConfig, environ: Mapping[str, str]) -> tuple[CheckStatus, str]:
    """Backends whose bearer token is configured but not there, by name of its variable or file:
    fail when no backend at all can be called, warn when only some lack it."""
    needing = [b for b in config.backends if b.credential is not None]
    missing = [f"{b.id} ({b.credential})" for b in needing if bearer_token(b, environ) is None]
    if not missing:
        return "pass", f"{len(needing)} backend credential(s) present"
    status: CheckStatus = "fail" if len(missing) == len(config.backends) else "warn"
    return status, "credential not set for backend(s): " + ", ".join(missing[:20])


def usable_keys(keys: Iterable[ApiKeyRecord], now: datetime) -> list[ApiKeyRecord]:
    return [k for k in keys if not k.revoked and (k.expires_at is None or k.expires_at > now)]


def keys_check(keys: Iterable[ApiKeyRecord], now: datetime) -> tuple[CheckStatus, str]:
    """fail when no key can authenticate (every request would get 401)."""
    usable = usable_keys(keys, now)
    if not usable:
        return (
            "fail",
            "no usable API key (none configured, or all revoked or expired): every request gets 401",
        )
    admins = sum("admin" in k.scopes for k in usable)
    return "pass", f"{len(usable)} usable API key(s), {admins} with scope admin"
