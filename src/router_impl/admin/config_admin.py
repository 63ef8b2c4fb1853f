"""Backend and model-policy administration: validate, write (audited) and describe config objects.

Writes go through the config source (every replica applies them); reads show this replica's applied
snapshot with its live figures (health registry, backend client). Documents come in as the contract
shapes them (already schema-checked); the config model has the last word (400 when it refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from router_impl import admin_views as views
from router_impl.admin.audit_trail import Caller
from router_impl.admin.config_writes import MESSAGE_MAX, ConfigWriter, invalid_object
from router_impl.config.layout import object_key
from router_impl.config.model import BackendConfig, BackendState, ModelPolicy, RuntimeConfig
from router_impl.config.source import (
    ConfigConflict,
    ConfigInvalid,
    ObjectKind,
    ObjectNotFound,
    SourceUnavailable,
)
from router_impl.errors import ApiError
from router_impl.routing.health import BackendHealth

Obj = TypeVar("Obj", bound=BaseModel)


class InFlight(Protocol):
    def in_flight(self, backend_id: str) -> int: ...


def _found(obj: Obj | None, what: str) -> Obj:
    """``obj``, or 404 naming ``what`` when there is none."""
    if obj is None:
        raise ApiError("NOT_FOUND", f"No {what}.")
    return obj


class ConfigAdministration:
    """Backends, their operator state, and model policies; writes return the object and whether
    they created it (201) rather than replaced one (200)."""

    def __init__(
        self,
        *,
        config: Callable[[], RuntimeConfig],
        writer: ConfigWriter,
        health: BackendHealth,
        backends: InFlight,
        applied_at: Callable[[], datetime | None],
        now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.writer = writer
        self.health = health
        self.backends = backends
        self.applied_at = applied_at
        self.now = now

    # ------------------------------------------------------------------ backends

    def live(self, config: RuntimeConfig, backend_id: str) -> views.LiveFigures:
        health = self.health
        error_ratio = 0.0
        if backend_id in health.known():  # stats() would start tracking a backend never called
            stats = health.stats(backend_id)
            calls = stats.successes + stats.failures
            error_ratio = stats.failures / calls if calls else 0.0
        return views.LiveFigures(
            breaker_state=health.breaker_state(backend_id),
            in_flight=self.backends.in_flight(backend_id),
            error_ratio=error_ratio,
            weight_factor=health.weight_factor(backend_id, views.warmup_seconds_for(config, backend_id)),
            updated_at=self.applied_at() or self.now(),
        )

    def status(self, backend: BackendConfig, state: BackendState | None = None) -> dict[str, Any]:
        """``BackendStatus`` of ``backend``: its applied state unless ``state`` (just written) is given."""
        config = self.config()
        return views.backend_status(
            backend, state or config.state_of(backend.id), self.live(config, backend.id)
        )

    def backend_statuses(self) -> list[dict[str, Any]]:
        return [self.status(b) for b in self.config().backends]

    def backend(self, backend_id: str) -> BackendConfig:
        return _found(self.config().backend(backend_id), f"backend {backend_id!r}")

    async def _put(
        self, caller: Caller, kind: ObjectKind, object_id: str, existing: Obj | None, build: Callable[[], Obj]
    ) -> tuple[Obj, bool]:
        """Builds the object (400 when the config model refuses it) and writes it over ``existing``
        ("replace") or as new ("create"); returns it and whether it was created."""
        try:
            obj = build()
        except ValidationError as exc:
            raise invalid_object(exc) from exc
        await self.writer.put(caller, "replace" if existing is not None else "create", kind, object_id, obj)
        return obj, existing is None

    async def put_backend(
        self, caller: Caller, backend_id: str, document: Mapping[str, Any]
    ) -> tuple[BackendConfig, bool]:
        existing = self.config().backend(backend_id)
        return await self._put(
            caller,
            "backends",
            backend_id,
            existing,
            lambda: views.backend_config(backend_id, document, existing),
        )

    async def delete_backend(self, caller: Caller, backend_id: str) -> None:
        config = self.config()
        users = views.policies_using(config, backend_id)
        if users:
            raise ApiError(
                "CONFLICT",
                f"Backend {backend_id!r} is still used by model policies: {', '.join(users)}"[:MESSAGE_MAX],
                details=[
                    {"field": object_key("models", m)[:256], "message": "names this backend"} for m in users
                ][:100],
            )
        if backend_id in config.backend_states:  # its state goes with it (a state of no backend is invalid)
            try:
                await self.writer.writes.delete("backend_states", backend_id)
            except ObjectNotFound:
                pass
            except (ConfigInvalid, ConfigConflict, SourceUnavailable) as exc:
                raise ApiError(
                    "SERVICE_UNAVAILABLE", f"Could not clear the backend's state: {exc}"[:MESSAGE_MAX]
                ) from exc
        await self.writer.delete(caller, "backends", backend_id)

    async def set_backend_state(
        self, caller: Caller, backend_id: str, state: Any, reason: Any
    ) -> BackendState:
        """Writes the operator state (``state``, ``reason`` as the document gives them)."""
        self.backend(backend_id)
        try:
            written = BackendState(state=state, reason=reason, updated_at=self.now(), updated_by=caller.actor)
        except ValidationError as exc:
            raise invalid_object(exc) from exc
        await self.writer.put(
            caller,
            f"state:{written.state}",
            "backend_states",
            backend_id,
            written,
            invalid_as="NOT_FOUND",  # the backend vanished meanwhile, or lives only in an overlay
            conflict_as="SERVICE_UNAVAILABLE",  # 409 is not documented here; retrying helps
        )
        return written

    # ------------------------------------------------------------------ model policies

    def policy(self, model: str) -> ModelPolicy:
        """By name or alias (a model whose name contains '/' is addressed by an alias)."""
        return _found(self.config().policy_for(model), f"model policy {model!r}")

    async def put_model_policy(
        self, caller: Caller, model: str, document: Mapping[str, Any]
    ) -> tuple[ModelPolicy, bool]:
        existing = self.config().policy_for(model)
        name = existing.model if existing is not None else model  # an alias path addresses its policy
        given = document.get("model")
        if given is not None and given not in (model, name):
            raise ApiError(
                "VALIDATION_ERROR",
                f"The body names model {given!r} but the path names {model!r}.",
                details=[{"field": "body.model", "message": "differs from the path's model"}],
            )
        return await self._put(
            caller, "models", name, existing, lambda: views.model_policy(name, document, existing)
        )

    async def delete_model_policy(self, caller: Caller, model: str) -> None:
        policy = self.config().policy_for(model)
        name = policy.model if policy is not None else model
        await self.writer.delete(
            caller,
            "models",
            name,
            # Neither is documented here: an invalid source or a lost race is the source's trouble.
            invalid_as="SERVICE_UNAVAILABLE",
            conflict_as="SERVICE_UNAVAILABLE",
        )
