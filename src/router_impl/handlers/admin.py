"""Admin operations (scope admin). Keys today; backends, policies and limits follow in their issues."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from router_impl.auth.admin import ApiKeyAdmin
from router_impl.auth.keys import ApiKeyRecord
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.web.current import current_document, current_state
from router_impl.web.responses import json_response


def _key_admin(components: Components) -> ApiKeyAdmin:
    if components.key_admin is None:
        raise ApiError("NOT_IMPLEMENTED", "Keys are managed by the external identity service.")
    return components.key_admin


def _timestamp(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


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
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def create_api_key(components: Components) -> Response:
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
    created: dict[str, Any] = {"key": key_info(record), "secret": secret}
    if signing_secret is not None:
        created["signing_secret"] = signing_secret
    return json_response(created, 201, {"Cache-Control": "no-store"})


async def list_api_keys(
    components: Components, organization_id: str | None = None, limit: int = 100, cursor: str | None = None
) -> Response:
    records, next_cursor = await _key_admin(components).list(organization_id, limit, cursor)
    page: dict[str, Any] = {"items": [key_info(r) for r in records]}
    if next_cursor is not None:
        page["next_cursor"] = next_cursor
    return json_response(page)


async def revoke_api_key(components: Components, key_id: str) -> Response:
    document = current_state().document
    reason = document.get("reason") if isinstance(document, dict) else None
    record = await _key_admin(components).revoke(key_id, datetime.now(UTC), reason)
    return json_response(key_info(record))
