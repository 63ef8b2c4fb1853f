"""API-key administration: create, list and revoke keys, each change audited at the injected clock.

Audit events and logs carry ids only: never a secret, its hash or the sealed signing secret. When an
external identity service owns the keys there is no key store here and every operation answers 501.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from router_impl.admin.audit_trail import Caller, RecordAudit, record_change
from router_impl.auth.admin import ApiKeyAdmin, KeyPage, NewKey
from router_impl.auth.keys import ApiKeyRecord, Scope
from router_impl.errors import ApiError
from router_impl.usage.audit import AuditAction


class KeyAdministration:
    def __init__(
        self, *, store: ApiKeyAdmin | None, record_audit: RecordAudit, now: Callable[[], datetime]
    ) -> None:
        self._store = store
        self.record_audit = record_audit
        self.now = now

    @property
    def store(self) -> ApiKeyAdmin:
        """The key store; 501 when an external identity service owns the keys."""
        if self._store is None:
            raise ApiError("NOT_IMPLEMENTED", "Keys are managed by the external identity service.")
        return self._store

    async def create(
        self,
        caller: Caller,
        *,
        organization_id: str,
        name: str | None,
        scopes: Iterable[Scope],
        allowed_models: Iterable[str] | None,
        expires_at: datetime | None,
        signature_required: bool,
    ) -> NewKey:
        record, secret, signing_secret = await self.store.create(
            organization_id=organization_id,
            name=name,
            scopes=scopes,
            allowed_models=allowed_models,
            expires_at=expires_at,
            signature_required=signature_required,
            now=self.now(),
        )
        await self._audit(caller, "KEY_CREATED", record)
        return NewKey(record, secret, signing_secret)

    async def list(self, organization_id: str | None, limit: int, cursor: str | None) -> KeyPage:
        """A cursor this API never issued is a page with nothing after it, as in the audit API (the
        contract's cursors are opaque, so any string of its pattern is a valid request)."""
        return await self.store.list(organization_id, limit, cursor)

    async def revoke(self, caller: Caller, key_id: str, reason: str | None) -> ApiKeyRecord:
        record = await self.store.revoke(key_id, self.now(), reason)
        await self._audit(caller, "KEY_REVOKED", record)
        return record

    async def _audit(self, caller: Caller, action: AuditAction, record: ApiKeyRecord) -> None:
        """Who changed which key (ids only)."""
        event = caller.event(
            action,
            f"{action.lower()} {record.id}",
            self.now(),
            organization_id=record.organization_id,
            metadata={"key_id": record.id, "scopes": ",".join(sorted(record.scopes))},
        )
        await record_change(
            self.record_audit,
            event,
            "api_key_change",
            key_id=record.id,
            organization_id=record.organization_id,
            action=action,
        )
