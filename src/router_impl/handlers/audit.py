"""Audit trail queries (scope audit): one request's record, and pages of events.

A key sees its own organisation's events only; a key that also holds scope admin sees every
organisation's. Another organisation's request reads as unknown (404), so ids leak nothing; a
request id is looked up per organisation (an admin reads the id's newest event across them).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.responses import Response

from router_impl.auth.authenticator import Principal
from router_impl.components import Components
from router_impl.errors import ApiError
from router_impl.handlers.times import utc_instant
from router_impl.usage.audit import (
    AuditAction,
    AuditPage,
    AuditQuery,
    AuditUnavailable,
    InvalidCursor,
    audit_record,
)
from router_impl.web.current import RequestContext
from router_impl.web.responses import json_response

# RFC 3339 date-time, as the contract's `format: date-time` means it (lower-case t/z and leap seconds too).
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def _principal(token_info: dict[str, Any]) -> Principal:
    principal = token_info.get("principal")
    if not isinstance(principal, Principal):  # the security layer always puts it there
        raise ApiError("AUTH_INVALID")
    return principal


def _sees_all(principal: Principal) -> bool:
    return "admin" in principal.scopes


def _unavailable() -> ApiError:
    return ApiError("SERVICE_UNAVAILABLE", "The audit store is unavailable; retry shortly.")


def _date_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    match = _DATE_TIME.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        fraction, zulu, sign, off_h, off_m = match.groups()[6:]
        offset = timedelta(0) if zulu else timedelta(hours=int(off_h), minutes=int(off_m))
        if sign == "-":
            offset = -offset
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        # A leap second (:60) is the last instant of its minute.
        moment = datetime(year, month, day, hour, minute, min(second, 59), micros, timezone(offset))
        return utc_instant(moment)
    except (ValueError, OverflowError) as exc:
        raise ApiError(
            "VALIDATION_ERROR",
            f"{name} is not an RFC 3339 date-time.",
            details=[{"field": f"query.{name}", "message": "not an RFC 3339 date-time"}],
        ) from exc


async def get_audit_by_request(
    components: Components, request: RequestContext, request_id: str, token_info: dict[str, Any]
) -> Response:
    principal = _principal(token_info)
    organization_id = None if _sees_all(principal) else principal.organization_id
    try:
        event = await components.audit.by_request(request_id, organization_id)
    except AuditUnavailable as exc:
        raise _unavailable() from exc
    if event is None:
        raise ApiError("REQUEST_NOT_FOUND", "No audit record of this request.")
    return json_response(audit_record(event))


async def list_audit_events(
    components: Components,
    request: RequestContext,
    token_info: dict[str, Any],
    organization_id: str | None = None,
    action: AuditAction | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Response:
    principal = _principal(token_info)
    if organization_id is None:
        organization_id = None if _sees_all(principal) else principal.organization_id
    elif organization_id != principal.organization_id and not _sees_all(principal):
        raise ApiError("FORBIDDEN", "This key may only read its own organisation's audit events.")
    query = AuditQuery(
        organization_id=organization_id,
        action=action,
        since=_date_time(since, "since"),
        until=_date_time(until, "until"),
        limit=limit,
        cursor=cursor,
    )
    try:
        page = await components.audit.query(query)
    except InvalidCursor:
        # The contract accepts any cursor matching its pattern: one that matches no position is an
        # empty page (a malformed one is already refused by the pattern).
        page = AuditPage((), None)
    except AuditUnavailable as exc:
        raise _unavailable() from exc
    body: dict[str, Any] = {"items": [audit_record(event) for event in page.items]}
    if page.next_cursor is not None:
        body["next_cursor"] = page.next_cursor
    return json_response(body)
