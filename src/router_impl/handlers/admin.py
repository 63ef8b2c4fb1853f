"""Admin operations (scope admin): keys, backends, model policies and recent routing decisions.

Backend and policy writes go through the config source (every replica applies them); reads show
this replica's applied snapshot. Organisation limits are config objects too (``limits/<org>``);
their live counters come from the limit store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.responses import Response

from router_impl import admin_views as views
from router_impl.auth.admin import ApiKeyAdmin
from router_impl.auth.keys import ApiKeyRecord
from router_impl.components import Components
from router_impl.config.layout import object_key, summary
from router_impl.config.model import BackendConfig, BackendState, ModelPolicy, OrgLimits, RuntimeConfig
from router_impl.config.source import ConfigConflict, ConfigInvalid, Kind, ObjectNotFound, SourceUnavailable
from router_impl.errors import ApiError
from router_impl.limits.state import ResetTarget
from router_impl.usage.audit import AuditAction, AuditEvent
from router_impl.web.current import current_document, current_state
from router_impl.web.responses import json_response, timestamp


def _key_admin(components: Components) -> ApiKeyAdmin:
    if components.key_admin is None:
        raise ApiError("NOT_IMPLEMENTED", "Keys are managed by the external identity service.")
    return components.key_admin


def _timestamp(value: datetime | None) -> str | None:
    return timestamp(value) if value is not None else None


def key_info(record: ApiKeyRecord) -> dict[str, Any]:
    """ApiKeyInfo: metadata only -- never the secret, its hash or the sealed signing secret."""
    info: dict[str, Any] = {
        "id": record.id,
        "organization_id": record.organization_id,
        "scopes": sorted(record.scopes),
        "revoked": record.revoked,
        "signature_required": record.signature_required,
    }
    optional = {
        "name": record.name or None,
        "prefix": record.prefix or None,
        "allowed_models": sorted(record.allowed_models) if record.allowed_models is not None else None,
        "expires_at": _timestamp(record.expires_at),
        "revoked_at": _timestamp(record.revoked_at),
        "created_at": _timestamp(record.created_at),
    }
    info.update({k: v for k, v in optional.items() if v is not None})
    return info


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError("VALIDATION_ERROR", "expires_at is not an RFC 3339 date-time.") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:  # the instant in UTC, as it is stored and listed
        return parsed.astimezone(UTC)
    except OverflowError:  # an offset pushes the calendar's first or last day past its edge: clamp to it
        edge = datetime.min if parsed.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


async def _audit_key_change(
    components: Components, token_info: dict[str, Any], action: AuditAction, record: ApiKeyRecord
) -> None:
    """Who changed which key (ids only: never a secret, hash or sealed signing secret)."""
    actor = _actor(token_info)
    state = current_state()
    log.info(
        "api_key_change",
        actor_key_id=actor,
        key_id=record.id,
        organization_id=record.organization_id,
        action=action,
    )
    await components.auditing.record(
        AuditEvent(
            request_id=state.request_id,
            organization_id=record.organization_id,
            api_key_id=actor or "",
            action=action,
            decision_reason=f"{action.lower()} {record.id}"[:500],
            timestamp=datetime.now(UTC),
            actor=actor,
            trace_id=state.trace_id,
            metadata={"key_id": record.id, "scopes": ",".join(sorted(record.scopes))},
        )
    )


async def create_api_key(components: Components, token_info: dict[str, Any]) -> Response:
    body = current_document()
    record, secret, signing_secret = await _key_admin(components).create(
        organization_id=body["organization_id"],
        name=body.get("name"),
        scopes=body["scopes"],
        allowed_models=body.get("allowed_models"),
        expires_at=_parse_time(body.get("expires_at")),
        signature_required=bool(body.get("signature_required", False)),
        now=datetime.now(UTC),
    )
    await _audit_key_change(components, token_info, "KEY_CREATED", record)
    created: dict[str, Any] = {"key": key_info(record), "secret": secret}
    if signing_secret is not None:
        created["signing_secret"] = signing_secret
    return json_response(created, 201, {"Cache-Control": "no-store"})


async def list_api_keys(
    components: Components, organization_id: str | None = None, limit: int = 100, cursor: str | None = None
) -> Response:
    admin = _key_admin(components)
    # A cursor this API never issued is a page with nothing after it, as in the audit API (the
    # contract's cursors are opaque, so any string of its pattern is a valid request).
    records, next_cursor = await admin.list(organization_id, limit, cursor)
    page: dict[str, Any] = {"items": [key_info(r) for r in records]}
    if next_cursor is not None:
        page["next_cursor"] = next_cursor
    return json_response(page)


async def revoke_api_key(components: Components, key_id: str, token_info: dict[str, Any]) -> Response:
    document = current_state().document
    reason = document.get("reason") if isinstance(document, dict) else None
    record = await _key_admin(components).revoke(key_id, datetime.now(UTC), reason)
    await _audit_key_change(components, token_info, "KEY_REVOKED", record)
    return json_response(key_info(record))


# ---------------------------------------------------------------- config writes

log = structlog.get_logger("router.admin")
_MESSAGE_MAX = 2000


def _actor(token_info: dict[str, Any]) -> str | None:
    principal = token_info.get("principal")
    return getattr(principal, "key_id", None) or token_info.get("sub")


def _problem_details(problems: dict[str, str]) -> list[dict[str, str]]:
    return [{"field": key[:256], "message": reason[:1000]} for key, reason in sorted(problems.items())][:100]


def _invalid_object(exc: ValidationError) -> ApiError:
    return ApiError("VALIDATION_ERROR", f"Invalid object: {summary(exc)}"[:_MESSAGE_MAX])


async def _write(
    components: Components,
    token_info: dict[str, Any],
    action: str,
    kind: Kind,
    object_id: str,
    call: Callable[[], Awaitable[int]],
    *,
    invalid_as: str = "CONFLICT",
    conflict_as: str = "CONFLICT",
) -> int:
    """Run one source write, mapping the source's errors to the contract's; log the audit event.

    ``invalid_as`` / ``conflict_as`` let an operation that does not document 409 answer otherwise."""
    try:
        revision = await call()
    except ObjectNotFound as exc:
        raise ApiError("NOT_FOUND", f"No {kind} object {object_id!r} in the config source.") from exc
    except ConfigInvalid as exc:
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(exc.problems.items()))
        message = f"The change would make the runtime config invalid: {listed}"[:_MESSAGE_MAX]
        raise ApiError(invalid_as, message, details=_problem_details(exc.problems)) from exc
    except ConfigConflict as exc:
        raise ApiError(conflict_as, str(exc)[:_MESSAGE_MAX]) from exc
    except SourceUnavailable as exc:
        raise ApiError(
            "SERVICE_UNAVAILABLE", f"The config source is unavailable: {exc}"[:_MESSAGE_MAX]
        ) from exc
    actor = _actor(token_info)
    log.info(
        "policy_update",
        actor_key_id=actor,
        kind=kind,
        id=object_id,
        key=object_key(kind, object_id),
        action=action,
        revision=revision,
    )
    state = current_state()
    await components.auditing.record(
        AuditEvent(
            request_id=state.request_id,
            organization_id=object_id if kind == "limits" else "",
            api_key_id=actor or "",
            action="POLICY_UPDATE",
            decision_reason=f"{action} {object_key(kind, object_id)}"[:500],
            timestamp=datetime.now(UTC),
            actor=actor,
            trace_id=state.trace_id,
            metadata={"kind": kind, "id": object_id[:512], "action": action, "revision": str(revision)},
        )
    )
    return revision


# ---------------------------------------------------------------- backends


def _live(components: Components, config: RuntimeConfig, backend_id: str) -> views.LiveFigures:
    health = components.health_registry
    error_ratio = 0.0
    if backend_id in health.known():  # stats() would start tracking a backend never called
        stats = health.stats(backend_id)
        calls = stats.successes + stats.failures
        error_ratio = stats.failures / calls if calls else 0.0
    return views.LiveFigures(
        breaker_state=health.breaker_state(backend_id),
        in_flight=components.backend_client.in_flight(backend_id),
        error_ratio=error_ratio,
        weight_factor=health.weight_factor(backend_id, views.warmup_seconds_for(config, backend_id)),
        updated_at=components.config_service.applied_at or datetime.now(UTC),
    )


def _status(components: Components, config: RuntimeConfig, backend: BackendConfig) -> dict[str, Any]:
    return views.backend_status(backend, config.state_of(backend.id), _live(components, config, backend.id))


def _backend(config: RuntimeConfig, backend_id: str) -> BackendConfig:
    backend = config.backend(backend_id)
    if backend is None:
        raise ApiError("NOT_FOUND", f"No backend {backend_id!r}.")
    return backend


async def list_backends(components: Components) -> Response:
    config = components.config.current()
    return json_response({"items": [_status(components, config, b) for b in config.backends]})


async def get_backend(components: Components, backend_id: str) -> Response:
    config = components.config.current()
    return json_response(_status(components, config, _backend(config, backend_id)))


async def put_backend(components: Components, backend_id: str, token_info: dict[str, Any]) -> Response:
    existing = components.config.current().backend(backend_id)
    try:
        backend = views.backend_config(backend_id, current_document(), existing)
    except ValidationError as exc:
        raise _invalid_object(exc) from exc
    action = "replace" if existing is not None else "create"
    await _write(
        components,
        token_info,
        action,
        "backends",
        backend_id,
        lambda: components.config_service.put("backends", backend_id, backend),
    )
    config = components.config.current()
    return json_response(_status(components, config, backend), 200 if existing is not None else 201)


async def delete_backend(components: Components, backend_id: str, token_info: dict[str, Any]) -> Response:
    config = components.config.current()
    users = views.policies_using(config, backend_id)
    if users:
        raise ApiError(
            "CONFLICT",
            f"Backend {backend_id!r} is still used by model policies: {', '.join(users)}"[:_MESSAGE_MAX],
            details=[
                {"field": object_key("models", m)[:256], "message": "names this backend"} for m in users
            ][:100],
        )
    service = components.config_service
    if backend_id in config.backend_states:  # its state goes with it (a state of no backend is invalid)
        try:
            await service.delete("backend_states", backend_id)
        except ObjectNotFound:
            pass
        except (ConfigInvalid, ConfigConflict, SourceUnavailable) as exc:
            raise ApiError(
                "SERVICE_UNAVAILABLE", f"Could not clear the backend's state: {exc}"[:_MESSAGE_MAX]
            ) from exc
    await _write(
        components,
        token_info,
        "delete",
        "backends",
        backend_id,
        lambda: service.delete("backends", backend_id),
    )
    return Response(status_code=204)


async def set_backend_state(components: Components, backend_id: str, token_info: dict[str, Any]) -> Response:
    _backend(components.config.current(), backend_id)
    body = current_document()
    try:
        state = BackendState(
            state=body["state"],
            reason=body["reason"],
            updated_at=datetime.now(UTC),
            updated_by=_actor(token_info),
        )
    except ValidationError as exc:
        raise _invalid_object(exc) from exc
    await _write(
        components,
        token_info,
        f"state:{state.state}",
        "backend_states",
        backend_id,
        lambda: components.config_service.put("backend_states", backend_id, state),
        invalid_as="NOT_FOUND",  # the backend vanished meanwhile, or lives only in an overlay
        conflict_as="SERVICE_UNAVAILABLE",  # 409 is not documented here; retrying helps
    )
    config = components.config.current()
    backend = config.backend(backend_id) or _backend(config, backend_id)
    # The state just written, whether or not this replica has applied it yet.
    return json_response(views.backend_status(backend, state, _live(components, config, backend_id)))


# ---------------------------------------------------------------- model policies


def _policy(config: RuntimeConfig, model: str) -> ModelPolicy:
    """By name or alias (a model whose name contains '/' is addressed by an alias)."""
    policy = config.policy_for(model)
    if policy is None:
        raise ApiError("NOT_FOUND", f"No model policy {model!r}.")
    return policy


async def list_model_policies(components: Components) -> Response:
    config = components.config.current()
    return json_response({"items": [views.policy_document(p) for p in config.models]})


async def get_model_policy(components: Components, model: str) -> Response:
    return json_response(views.policy_document(_policy(components.config.current(), model)))


async def put_model_policy(components: Components, model: str, token_info: dict[str, Any]) -> Response:
    body = current_document()
    existing = components.config.current().policy_for(model)
    name = existing.model if existing is not None else model  # an alias path addresses its policy
    given = body.get("model")
    if given is not None and given not in (model, name):
        raise ApiError(
            "VALIDATION_ERROR",
            f"The body names model {given!r} but the path names {model!r}.",
            details=[{"field": "body.model", "message": "differs from the path's model"}],
        )
    try:
        policy = views.model_policy(name, body, existing)
    except ValidationError as exc:
        raise _invalid_object(exc) from exc
    action = "replace" if existing is not None else "create"
    await _write(
        components,
        token_info,
        action,
        "models",
        name,
        lambda: components.config_service.put("models", name, policy),
    )
    return json_response(views.policy_document(policy), 200 if existing is not None else 201)


async def delete_model_policy(components: Components, model: str, token_info: dict[str, Any]) -> Response:
    policy = components.config.current().policy_for(model)
    name = policy.model if policy is not None else model
    await _write(
        components,
        token_info,
        "delete",
        "models",
        name,
        lambda: components.config_service.delete("models", name),
        # Neither is documented here: an invalid source or a lost race is the source's trouble.
        invalid_as="SERVICE_UNAVAILABLE",
        conflict_as="SERVICE_UNAVAILABLE",
    )
    return Response(status_code=204)


# ---------------------------------------------------------------- routing decisions


async def list_routing_decisions(
    components: Components, model: str | None = None, organization_id: str | None = None, limit: int = 100
) -> Response:
    records = components.decisions.recent(model=model, organization_id=organization_id, limit=limit)
    return json_response({"items": [views.decision_document(r) for r in records]})


# ---------------------------------------------------------------- limits


async def get_org_limits(components: Components, org_id: str) -> Response:
    limits = components.limits.limits_of(org_id) or OrgLimits()
    state = await components.limits.state(org_id)
    return json_response(views.limits_state_document(org_id, limits, state))


async def put_org_limits(components: Components, org_id: str, token_info: dict[str, Any]) -> Response:
    try:
        limits = OrgLimits.model_validate(current_document())
    except ValidationError as exc:
        raise _invalid_object(exc) from exc
    existing = components.limits.limits_of(org_id)
    action = "replace" if existing is not None else "create"
    return await _store_limits(components, token_info, action, org_id, limits)


async def patch_org_limits(components: Components, org_id: str, token_info: dict[str, Any]) -> Response:
    existing = components.limits.limits_of(org_id)
    try:
        limits = views.patched_limits(existing, current_document())
    except ValidationError as exc:
        raise _invalid_object(exc) from exc
    action = "patch" if existing is not None else "create"
    return await _store_limits(components, token_info, action, org_id, limits)


async def _store_limits(
    components: Components, token_info: dict[str, Any], action: str, org_id: str, limits: OrgLimits
) -> Response:
    """Writes (audited), applies and answers an organisation's new limits: PUT and PATCH alike."""
    await _write(
        components,
        token_info,
        action,
        "limits",
        org_id,
        lambda: components.config_service.put("limits", org_id, limits),
        invalid_as="VALIDATION_ERROR",
        conflict_as="SERVICE_UNAVAILABLE",
    )
    await components.limits.limits_changed(org_id)
    state = await components.limits.state(org_id)
    return json_response(views.limits_state_document(org_id, limits, state))


async def reset_org_limits(components: Components, org_id: str, token_info: dict[str, Any]) -> Response:
    body = current_document()
    scope: ResetTarget = body.get("scope") or "buckets"  # the contract's enum, validated
    key_id = body.get("key_id")
    cleared = await components.limits.reset(org_id, scope, key_id)
    now = datetime.now(UTC)
    actor = _actor(token_info)
    await components.auditing.record(
        AuditEvent(
            request_id=current_state().request_id,
            organization_id=org_id,
            api_key_id=actor or "",
            action="LIMIT_RESET",
            decision_reason=str(body.get("reason", ""))[:500],
            timestamp=now,
            actor=actor,
            trace_id=current_state().trace_id,
            metadata={
                "scope": scope,
                "cleared": ",".join(cleared)[:512],
                **({"key_id": key_id} if key_id else {}),
            },
        )
    )
    log.info(
        "limit_reset", actor_key_id=actor, organization_id=org_id, scope=scope, key_id=key_id, cleared=cleared
    )
    result: dict[str, Any] = {
        "organization_id": org_id,
        "scope": scope,
        "reset_at": timestamp(now),
        "cleared": list(cleared),
    }
    if key_id:
        result["key_id"] = key_id
    return json_response(result)
