"""Organisation-limit administration without HTTP: written, applied, reset; audited at the injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_impl.config.model import ModelPricing
from router_impl.errors import ApiError
from router_impl.limits.plan import Demand
from tests.admin.support import admin_services
from tests.config.samples import NOW


async def test_new_limits_are_written_applied_and_audited_and_a_reset_clears_the_buckets(
    tmp_path: Path,
) -> None:
    async with admin_services(tmp_path) as admin:
        limits = admin.services.limits
        written, state = await limits.replace(
            admin.caller(), "acme", {"rate_limits": {"requests_per_minute": 10}}
        )
        assert written.rate_limits is not None and state.requests_remaining == 10
        await limits.limits.admit(Demand("acme", "key_1", 1, 1, ModelPricing()))
        patched, state = await limits.patch(admin.caller(), "acme", {"rate_limits": {"burst": 20}})
        assert patched.rate_limits is not None and patched.rate_limits.burst == 20
        assert state.requests_remaining == 9  # the bucket's level survives a change of its size
        reset = await limits.reset(admin.caller(), "acme", "buckets", None, "support ticket 7")
        assert reset.at == NOW and "org_bucket:requests" in reset.cleared
        assert (await limits.state("acme"))[1].requests_remaining == 20
        events = await admin.events()
        assert [(e.action, e.organization_id, e.decision_reason) for e in events] == [
            ("POLICY_UPDATE", "acme", "create limits/acme"),
            ("POLICY_UPDATE", "acme", "patch limits/acme"),
            ("LIMIT_RESET", "acme", "support ticket 7"),
        ]
        assert events[-1].metadata["scope"] == "buckets" and events[-1].timestamp == NOW


async def test_limits_the_config_model_refuses_answer_400(tmp_path: Path) -> None:
    async with admin_services(tmp_path) as admin:
        with pytest.raises(ApiError) as refused:
            await admin.services.limits.replace(admin.caller(), "acme", {"max_tokens_cap": 0})
        assert (refused.value.status_code, refused.value.code) == (400, "VALIDATION_ERROR")
