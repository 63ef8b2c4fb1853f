"""Admin HTTP handlers (scope admin): keys, backends, model policies, routing decisions, org limits.

Each handler translates HTTP to a call of an admin application service (``router_impl.admin``) and
its answer back to the contract's document; the services write, validate, audit and map errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from router_impl import admin_views as views
from router_impl.admin.audit_trail import Caller
from router_impl.auth.keys import ApiKeyRecord
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.handlers.times import utc_instant
from router_impl.limits.state import ResetTarget
from router_impl.web.current import RequestContext
from router_impl.web.responses import json_response, timestamp


def _caller(request: RequestContext, token_info: dict[str, Any]) -> Caller:
    principal = token_info.get("principal")
    actor = getattr(principal, "key_id", None) or token_info.get("sub")
    return Caller(actor, request.request_id, request.trace_id)


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
    return utc_instant(parsed)  # the instant in UTC, as it is stored and listed


# ---------------------------------------------------------------- keys


async def create_api_key(
    components: Components, request: RequestContext, token_info: dict[str, Any]
) -> Response:
    body = request.json_body()
    keys = components.key_admin
    keys.store  # noqa: B018 -- 501 before the body is looked at, when an identity service owns keys
    new = await keys.create(
        _caller(request, token_info),
        organization_id=body["organization_id"],
        name=body.get("name"),
        scopes=body["scopes"],
        allowed_models=body.get("allowed_models"),
        expires_at=_parse_time(body.get("expires_at")),
        signature_required=bool(body.get("signature_required", False)),
    )
    created: dict[str, Any] = {"key": key_info(new.record), "secret": new.secret}
    if new.signing_secret is not None:
        created["signing_secret"] = new.signing_secret
    return json_response(created, 201, {"Cache-Control": "no-store"})


async def list_api_keys(
    components: Components,
    request: RequestContext,
    organization_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Response:
    records, next_cursor = await components.key_admin.list(organization_id, limit, cursor)
    page: dict[str, Any] = {"items": [key_info(r) for r in records]}
    if next_cursor is not None:
        page["next_cursor"] = next_cursor
    return json_response(page)


async def revoke_api_key(
    components: Components, request: RequestContext, key_id: str, token_info: dict[str, Any]
) -> Response:
    document = request.document
    reason = document.get("reason") if isinstance(document, dict) else None
    record = await components.key_admin.revoke(_caller(request, token_info), key_id, reason)
    return json_response(key_info(record))


# ---------------------------------------------------------------- backends


async def list_backends(components: Components, request: RequestContext) -> Response:
    return json_response({"items": components.config_admin.backend_statuses()})


async def get_backend(components: Components, request: RequestContext, backend_id: str) -> Response:
    admin = components.config_admin
    return json_response(admin.status(admin.backend(backend_id)))


async def put_backend(
    components: Components, request: RequestContext, backend_id: str, token_info: dict[str, Any]
) -> Response:
    admin = components.config_admin
    backend, created = await admin.put_backend(_caller(request, token_info), backend_id, request.json_body())
    return json_response(admin.status(backend), 201 if created else 200)


async def delete_backend(
    components: Components, request: RequestContext, backend_id: str, token_info: dict[str, Any]
) -> Response:
    await components.config_admin.delete_backend(_caller(request, token_info), backend_id)
    return Response(status_code=204)


async def set_backend_state(
    components: Components, request: RequestContext, backend_id: str, token_info: dict[str, Any]
) -> Response:
    admin = components.config_admin
    body = request.json_body()
    state = await admin.set_backend_state(
        _caller(request, token_info), backend_id, body["state"], body["reason"]
    )
    # The state just written, whether or not this replica has applied it yet.
    return json_response(admin.status(admin.backend(backend_id), state))


# ---------------------------------------------------------------- model policies


async def list_model_policies(components: Components, request: RequestContext) -> Response:
    config = components.config.current()
    return json_response({"items": [views.policy_document(p) for p in config.models]})


async def get_model_policy(components: Components, request: RequestContext, model: str) -> Response:
    return json_response(views.policy_document(components.config_admin.policy(model)))


async def put_model_policy(
    components: Components, request: RequestContext, model: str, token_info: dict[str, Any]
) -> Response:
    policy, created = await components.config_admin.put_model_policy(
        _caller(request, token_info), model, request.json_body()
    )
    return json_response(views.policy_document(policy), 201 if created else 200)


async def delete_model_policy(
    components: Components, request: RequestContext, model: str, token_info: dict[str, Any]
) -> Response:
    await components.config_admin.delete_model_policy(_caller(request, token_info), model)
    return Response(status_code=204)


# ---------------------------------------------------------------- routing decisions


async def list_routing_decisions(
    components: Components,
    request: RequestContext,
    model: str | None = None,
    organization_id: str | None = None,
    limit: int = 100,
) -> Response:
    records = components.decisions.recent(model=model, organization_id=organization_id, limit=limit)
    return json_response({"items": [views.decision_document(r) for r in records]})


# ---------------------------------------------------------------- limits


async def get_org_limits(components: Components, request: RequestContext, org_id: str) -> Response:
    limits, state = await components.limits_admin.state(org_id)
    return json_response(views.limits_state_document(org_id, limits, state))


async def put_org_limits(
    components: Components, request: RequestContext, org_id: str, token_info: dict[str, Any]
) -> Response:
    limits, state = await components.limits_admin.replace(
        _caller(request, token_info), org_id, request.json_body()
    )
    return json_response(views.limits_state_document(org_id, limits, state))


async def patch_org_limits(
    components: Components, request: RequestContext, org_id: str, token_info: dict[str, Any]
) -> Response:
    limits, state = await components.limits_admin.patch(
        _caller(request, token_info), org_id, request.json_body()
    )
    return json_response(views.limits_state_document(org_id, limits, state))


async def reset_org_limits(
    components: Components, request: RequestContext, org_id: str, token_info: dict[str, Any]
) -> Response:
    body = request.json_body()
    target: ResetTarget = body.get("scope") or "buckets"  # the contract's enum, validated
    key_id = body.get("key_id")
    done = await components.limits_admin.reset(
        _caller(request, token_info), org_id, target, key_id, str(body.get("reason", ""))
    )
    result: dict[str, Any] = {
        "organization_id": org_id,
        "scope": target,
        "reset_at": timestamp(done.at),
        "cleared": list(done.cleared),
    }
    if key_id:
        result["key_id"] = key_id
    return json_response(result)
