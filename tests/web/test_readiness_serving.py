"""Readiness says a router is not ready when no request could succeed on it (issue 18.10): no usable
key at all, or no model and no admin key to add one. With no model but an admin key it stays in
service (degraded), so that key can configure it through the Service. The answer keeps the contract
shape (the original contract's counts ready_backends / degraded_backends among it), and the failing
check says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from router_impl.auth.keys import ApiKeyRecord, Scope, hash_secret
from router_impl.config.model import RuntimeConfig
from router_impl.settings import Settings
from tests.contract.openapi_check import assert_conforms
from tests.harness.config_docs import write_config
from tests.harness.inprocess import in_process


def key(name: str, scope: Scope, **extra: object) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=f"k-{name}", organization_id="org-a", key_hash=hash_secret(f"rk_{name}"), scopes={scope}, **extra
    )


@asynccontextmanager
async def router(tmp_path: Path, *keys: ApiKeyRecord) -> AsyncIterator[httpx.AsyncClient]:
    config = write_config(tmp_path, RuntimeConfig(api_keys=keys), "config.yaml")
    async with in_process(Settings(config_path=config, data_dir=tmp_path, access_log=False)) as running:
        yield running.client


def checks(answer: httpx.Response) -> dict[str, tuple[str, str]]:
    assert_conforms(answer)
    body = answer.json()
    assert (body["ready_backends"], body["degraded_backends"]) == (0, 0)
    return {c["name"]: (c["status"], c["details"]) for c in body["checks"]}


EXPIRED = datetime.now(UTC) - timedelta(days=1)


@pytest.mark.parametrize(
    "keys",
    [(), (key("revoked", "admin", revoked=True), key("expired", "inference", expires_at=EXPIRED))],
    ids=["no keys", "only revoked or expired keys"],
)
async def test_without_a_usable_key_the_router_is_not_ready_and_says_why(tmp_path, keys):
    async with router(tmp_path, *keys) as client:
        answer = await client.get("/v1/status/readyz")
    assert answer.status_code == 503
    found = checks(answer)
    assert answer.json()["status"] == "unhealthy"
    assert found["keys"][0] == "fail" and "no usable API key" in found["keys"][1]
    assert found["backends"][0] == "fail" and "no models configured" in found["backends"][1]


async def test_no_model_and_no_admin_key_is_not_ready(tmp_path):
    async with router(tmp_path, key("user", "inference")) as client:
        answer = await client.get("/v1/status/readyz")
    assert answer.status_code == 503
    found = checks(answer)
    assert found["keys"][0] == "pass"
    assert found["backends"] == (
        "fail",
        "no models configured and no admin key to add one: no inference request can succeed",
    )


async def test_no_model_with_an_admin_key_is_degraded_but_in_service(tmp_path):
    async with router(tmp_path, key("admin", "admin")) as client:
        answer = await client.get("/v1/status/readyz")
        models = await client.get("/v1/admin/models", headers={"X-API-Key": "rk_admin"})
    assert (answer.status_code, answer.json()["status"]) == (200, "degraded")
    assert checks(answer)["backends"][0] == "warn"
    assert models.status_code == 200  # the admin API it stays in service for
