"""API-key administration without HTTP: created and revoked at the injected clock, audited by id only."""

from __future__ import annotations

from pathlib import Path

from tests.admin.support import admin_services
from tests.config.samples import NOW


async def test_a_key_is_created_and_revoked_at_the_injected_clock_and_audited_by_id_only(
    tmp_path: Path,
) -> None:
    async with admin_services(tmp_path) as admin:
        keys = admin.services.keys
        new = await keys.create(
            admin.caller(),
            organization_id="acme",
            name="ci",
            scopes=["inference"],
            allowed_models=None,
            expires_at=None,
            signature_required=False,
        )
        assert new.record.created_at == NOW
        revoked = await keys.revoke(admin.caller(), new.record.id, "rotated")
        assert revoked.revoked and revoked.revoked_at == NOW
        records, _ = await keys.list("acme", 10, None)
        assert [r.id for r in records] == [new.record.id]
        events = await admin.events()
        assert [(e.action, e.timestamp, e.metadata["key_id"]) for e in events] == [
            ("KEY_CREATED", NOW, new.record.id),
            ("KEY_REVOKED", NOW, new.record.id),
        ]
        assert all(new.secret not in repr(e) for e in events)
