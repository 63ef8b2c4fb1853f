"""Config administration without HTTP: writes go to the config source, are audited at the injected
clock, and the source's refusals come back as the contract's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_impl.errors import ApiError
from tests.admin.support import TRACE_ID, admin_services
from tests.config.samples import NOW


async def test_a_backend_is_created_then_replaced_and_each_write_is_audited_at_the_injected_clock(
    tmp_path: Path,
) -> None:
    async with admin_services(tmp_path) as admin:
        config = admin.services.config
        document = {"base_url": "http://gpu-c.internal:8000", "models": ["m"]}
        backend, created = await config.put_backend(admin.caller(), "gpu-c", document)
        assert created and backend.id == "gpu-c"
        assert admin.config.holder.current().backend("gpu-c") is not None  # applied before it returns
        _, created = await config.put_backend(admin.caller(), "gpu-c", {**document, "timeout_ms": 5000})
        assert not created
        assert config.status(config.backend("gpu-c"))["timeout_ms"] == 5000
        events = await admin.events()
        assert [(e.action, e.decision_reason, e.timestamp, e.actor) for e in events] == [
            ("POLICY_UPDATE", "create backends/gpu-c", NOW, "key_admin1"),
            ("POLICY_UPDATE", "replace backends/gpu-c", NOW, "key_admin1"),
        ]
        assert events[0].request_id == "req_1" and events[0].trace_id == TRACE_ID
        assert "gpu-c" in admin.config_file.read_text()


async def test_a_backend_a_policy_still_routes_to_is_not_deleted_and_nothing_is_audited(
    tmp_path: Path,
) -> None:
    async with admin_services(tmp_path) as admin:
        with pytest.raises(ApiError) as refused:
            await admin.services.config.delete_backend(admin.caller(), "gpu-b")
        assert (refused.value.status_code, refused.value.code) == (409, "CONFLICT")
        assert refused.value.details == [
            {"field": "models/org%2Fmixtral:8x7b", "message": "names this backend"}
        ]
        assert await admin.events() == []


async def test_an_operator_state_carries_the_injected_time_and_the_actor(tmp_path: Path) -> None:
    async with admin_services(tmp_path) as admin:
        config = admin.services.config
        state = await config.set_backend_state(admin.caller(), "gpu-a", "disabled", "kernel upgrade")
        assert (state.state, state.updated_at, state.updated_by) == ("disabled", NOW, "key_admin1")
        status = config.status(config.backend("gpu-a"), state)
        assert status["state"] == "disabled"
        with pytest.raises(ApiError) as missing:
            await config.set_backend_state(admin.caller(), "gpu-z", "disabled", "no such backend")
        assert missing.value.code == "NOT_FOUND"


async def test_a_change_that_would_make_the_config_invalid_is_refused_with_the_sources_problems(
    tmp_path: Path,
) -> None:
    async with admin_services(tmp_path) as admin:
        config = admin.services.config
        with pytest.raises(ApiError) as refused:  # a policy naming a backend that does not exist
            await config.put_model_policy(
                admin.caller(), "new-model", {"backends": [{"backend_id": "gpu-z"}]}
            )
        assert (refused.value.status_code, refused.value.code) == (409, "CONFLICT")
        assert refused.value.details and "gpu-z" in refused.value.message
        with pytest.raises(ApiError) as mismatch:
            await config.put_model_policy(admin.caller(), "llama-3-8b", {"model": "other", "backends": []})
        assert mismatch.value.code == "VALIDATION_ERROR"
        with pytest.raises(ApiError) as invalid:
            await config.put_backend(admin.caller(), "gpu-c", {"base_url": "not a url", "models": ["m"]})
        assert invalid.value.code == "VALIDATION_ERROR" and invalid.value.message.startswith("Invalid object")
        assert await admin.events() == []


async def test_a_policy_addressed_by_its_alias_is_replaced_and_deleted_under_its_name(tmp_path: Path) -> None:
    async with admin_services(tmp_path) as admin:
        config = admin.services.config
        policy, created = await config.put_model_policy(
            admin.caller(),
            "llama",
            {"backends": [{"backend_id": "gpu-b", "weight": 100}], "aliases": ["llama"]},
        )
        assert (policy.model, created) == ("llama-3-8b", False)
        await config.delete_model_policy(admin.caller(), "llama")
        assert admin.config.holder.current().policy_for("llama-3-8b") is None
        assert [e.decision_reason for e in await admin.events()] == [
            "replace models/llama-3-8b",
            "delete models/llama-3-8b",
        ]
