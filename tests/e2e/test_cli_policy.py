"""An operator changes routing without a redeploy: `router policy apply FILE`, then `policy dump`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, key_record, model_doc, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess

ADMIN = "rk-demo-admin-key"
ROUTER_BIN = Path(sys.executable).with_name("router")


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockBackend]:
    with MockBackend(models=("policy-model",)) as backend:
        yield backend


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    fleet = RouterFleet(tmp_path_factory.mktemp("policy-cli"))
    yield fleet.start(args=("--demo",))
    fleet.close()


def policy(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(ROUTER_BIN), "policy", "--url", router.base_url, "--admin-key", ADMIN, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_a_policy_file_applied_with_the_cli_routes_traffic_and_dumps_back(demo, upstream, tmp_path):
    document = {
        "backends": [backend_doc("policy-backend", upstream.openai_base_url, "policy-model")],
        "models": [model_doc("policy-model", "policy-backend")],
    }
    path = write_config(tmp_path, document, "routing.yaml")

    applied = policy(demo, "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    rows = [row.split(maxsplit=1) for row in applied.stdout.splitlines()]
    assert rows == [["KIND", "ID"], ["backend", "policy-backend"], ["model", "policy-model"]]

    response = httpx.post(
        demo.base_url + "/v1/chat/completions",
        headers={"Authorization": "Bearer rk-demo-key"},
        json=chat_body("policy-model", "new route"),
        timeout=10,
    )
    assert (response.status_code, response.headers["x-routing-backend"]) == (200, "policy-backend")
    assert upstream.inference_requests == 1

    dumped = yaml.safe_load(policy(demo, "dump").stdout)
    assert "policy-backend" in [b["id"] for b in dumped["backends"]]
    assert "policy-model" in [m["model"] for m in dumped["models"]]


def test_an_invalid_policy_file_is_refused_and_nothing_changes(demo, tmp_path):
    path = write_config(tmp_path, {"models": [model_doc("orphan", "nope", weight=1)]}, "bad.yaml")
    refused = policy(demo, "apply", str(path))
    assert refused.returncode == 1 and '"CONFLICT"' in refused.stderr
    dumped = yaml.safe_load(policy(demo, "dump").stdout)
    assert "orphan" not in [m["model"] for m in dumped["models"]]


def test_writing_demo_modes_own_names_is_refused_and_the_replica_keeps_applying_changes(demo, upstream):
    headers = {"X-API-Key": ADMIN}
    clash = httpx.put(
        demo.base_url + "/v1/admin/models/demo",
        headers=headers,
        json={"backends": [{"backend_id": "demo-upstream", "weight": 1}]},
        timeout=10,
    )
    assert (clash.status_code, clash.json()["code"]) == (409, "CONFLICT")
    later = httpx.put(
        demo.base_url + "/v1/admin/backends/after-clash",
        headers=headers,
        json={"base_url": upstream.openai_base_url, "models": ["policy-model"]},
        timeout=10,
    )
    assert later.status_code in (200, 201), later.text
    listed = httpx.get(demo.base_url + "/v1/admin/backends/after-clash", headers=headers, timeout=10)
    assert listed.status_code == 200


def test_a_file_with_parts_the_admin_api_cannot_take_is_refused_whole_with_the_list(demo, upstream, tmp_path):
    document = {
        "backends": [backend_doc("never-written", upstream.openai_base_url, "policy-model")],
        "api_keys": [key_record("k", "acme", "rk_never_applied")],
        "routes": [],
    }
    refused = policy(demo, "apply", str(write_config(tmp_path, document, "keys.yaml")))
    assert refused.returncode == 2
    assert "api_keys: not applied" in refused.stderr and "routes: not applied" in refused.stderr
    assert "router config apply" in refused.stderr
    listed = httpx.get(
        demo.base_url + "/v1/admin/backends/never-written", headers={"X-API-Key": ADMIN}, timeout=10
    )
    assert listed.status_code == 404  # nothing was written


def test_org_limits_and_write_only_credentials_are_applied_and_never_shown(demo, upstream, tmp_path):
    document = {
        "backends": [
            backend_doc(
                "cred-backend",
                upstream.openai_base_url,
                "policy-model",
                api_key_env="POLICY_CLI_UPSTREAM_TOKEN",
            )
        ],
        "org_limits": {"policy-org": {"rate_limits": {"requests_per_minute": 77}}},
    }
    applied = policy(demo, "apply", "--json", str(write_config(tmp_path, document, "full.yaml")))
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["applied"] == [
        {"kind": "backend", "id": "cred-backend"},
        {"kind": "limits", "id": "policy-org"},
    ]
    headers = {"X-API-Key": ADMIN}
    limits = httpx.get(demo.base_url + "/v1/admin/orgs/policy-org/limits", headers=headers, timeout=10).json()
    assert limits["limits"]["rate_limits"]["requests_per_minute"] == 77
    shown = httpx.get(demo.base_url + "/v1/admin/backends/cred-backend", headers=headers, timeout=10).text
    assert "POLICY_CLI_UPSTREAM_TOKEN" not in shown and "api_key_env" not in shown
    assert "POLICY_CLI_UPSTREAM_TOKEN" not in policy(demo, "dump").stdout
    assert json.loads(policy(demo, "dump", "--json").stdout)["backends"]
    # A later write without credential fields keeps the reference: readiness still names it as missing.
    replaced = httpx.put(
        demo.base_url + "/v1/admin/backends/cred-backend",
        headers=headers,
        json={"base_url": upstream.openai_base_url, "models": ["policy-model"], "timeout_ms": 5000},
        timeout=10,
    )
    assert replaced.status_code == 200
    ready = httpx.get(demo.base_url + "/v1/status/readyz", timeout=10).json()
    check = next(c for c in ready["checks"] if c["name"] == "credentials")
    assert "cred-backend (environment variable POLICY_CLI_UPSTREAM_TOKEN)" in check["details"]
