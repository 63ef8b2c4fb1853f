"""Bootstrap that never loses anything silently: `router config apply FILE` writes every kind of a
runtime-config file (keys, limits, credential references included) to etcd or refuses with the list;
`--config FILE` with etcd seeds an empty prefix or refuses to start; backend credentials come from a
variable or a mounted file, and a missing or refused one is named, never a silent 502.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router_impl.auth.keys import hash_secret
from tests.harness.backend import MockBackend
from tests.harness.bodies import chat_body
from tests.harness.config_docs import backend_doc, key_record, model_doc, write_config
from tests.harness.process import ServiceStartError
from tests.harness.router_proc import RouterProcess
from tests.harness.wait import wait_until

ROUTER_BIN = Path(sys.executable).with_name("router")
ADMIN_SECRET = "rk_bootstrap-" + "c" * 40
USER_SECRET = "rk_file-user-" + "d" * 40
ENV_TOKEN = "tok-from-env-0123456789"
FILE_TOKEN = "tok-from-file-9876543210"


@pytest.fixture
def upstream() -> Iterator[MockBackend]:
    with MockBackend(models=("cfg-model",)) as backend:
        yield backend


@pytest.fixture
def etcd_env(etcd_server) -> dict[str, str]:
    return {
        "ROUTER_ETCD_ENDPOINTS": etcd_server.endpoints,
        "ROUTER_ETCD_PREFIX": f"/bootstrap-{uuid.uuid4()}/",
        "ROUTER_BOOTSTRAP_ADMIN_KEY_SHA256": hash_secret(ADMIN_SECRET),
        "UPSTREAM_TOKEN": ENV_TOKEN,
    }


def full_document(upstream: MockBackend, token_file: Path) -> dict[str, Any]:
    url = upstream.openai_base_url
    return {
        "backends": [
            backend_doc("b-env", url, "cfg-model", api_key_env="UPSTREAM_TOKEN"),
            backend_doc("b-file", url, "cfg-model", api_key_file=str(token_file)),
        ],
        "models": [
            model_doc("env-model", "b-env", weight=None),
            model_doc("file-model", "b-file", weight=None),
        ],
        "api_keys": [key_record("key-file-user", "acme", USER_SECRET)],
        "org_limits": {"acme": {"rate_limits": {"requests_per_minute": 1000}, "max_tokens_cap": 512}},
        "backend_states": {"b-file": {"state": "degraded", "reason": "from the file"}},
    }


def config_apply(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [str(ROUTER_BIN), "config", "apply", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def chat(router: RouterProcess, model: str) -> httpx.Response:
    return httpx.post(
        router.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_SECRET}"},
        json=chat_body(model, "bootstrap"),
        timeout=10,
    )


def admin_get(router: RouterProcess, path: str) -> httpx.Response:
    return httpx.get(router.base_url + path, headers={"X-API-Key": ADMIN_SECRET}, timeout=5)


def test_config_apply_writes_every_kind_of_a_file_to_etcd_and_the_fleet_serves_it(
    router_factory, etcd_env, upstream, tmp_path
):
    token_file = tmp_path / "upstream-token"
    token_file.write_text(FILE_TOKEN + "\n")
    a = router_factory(env=etcd_env)
    assert chat(a, "env-model").status_code == 401  # an empty etcd: no keys but the bootstrap admin

    applied = config_apply(etcd_env, write_config(tmp_path, full_document(upstream, token_file), "full.yaml"))
    assert applied.returncode == 0, applied.stderr
    for key in ("backends/b-env", "backends/b-file", "models/env-model", "keys/key-file-user", "limits/acme"):
        assert f"applied {key}" in applied.stdout
    wait_until(lambda: chat(a, "env-model").status_code == 200, what="the applied model served")
    assert upstream.last_inference_request.headers["Authorization"] == f"Bearer {ENV_TOKEN}"
    assert chat(a, "file-model").status_code == 200
    assert upstream.last_inference_request.headers["Authorization"] == f"Bearer {FILE_TOKEN}"

    limits = admin_get(a, "/v1/admin/orgs/acme/limits").json()["limits"]
    assert limits["rate_limits"]["requests_per_minute"] == 1000 and limits["max_tokens_cap"] == 512
    backend = admin_get(a, "/v1/admin/backends/b-file").json()
    assert backend["state"] == "degraded"
    assert (
        "api_key_file" not in backend and "api_key_env" not in admin_get(a, "/v1/admin/backends/b-env").json()
    )

    # A second router joining later gets everything; applying the same file again changes nothing.
    b = router_factory(env=etcd_env)
    assert chat(b, "file-model").status_code == 200
    again = config_apply(etcd_env, tmp_path / "full.yaml")
    assert again.returncode == 0 and '"applied": 0' in again.stdout


def test_config_apply_refuses_a_file_it_cannot_apply_whole_and_names_every_problem(
    router_factory, etcd_env, upstream, tmp_path
):
    a = router_factory(env=etcd_env)
    document = full_document(upstream, tmp_path / "token")
    document["backends"][0]["api_key"] = "sk-live-secret-never-echoed"  # not a field: a token in a file
    document["org_limits"]["acme"]["budget"] = {"daily_tokens": 5}  # misspelt `budgets`
    refused = config_apply(etcd_env, write_config(tmp_path, document, "bad.yaml"))
    assert refused.returncode == 2
    assert "backends.0.api_key" in refused.stderr and "org_limits.acme.budget" in refused.stderr
    assert "sk-live-secret-never-echoed" not in refused.stderr + refused.stdout
    assert admin_get(a, "/v1/admin/backends").json()["items"] == []  # nothing was written

    unknown = {"models": [model_doc("orphan", "nope", weight=None)]}
    refused = config_apply(etcd_env, write_config(tmp_path, unknown, "orphan.yaml"))
    assert refused.returncode == 2 and "unknown backend" in refused.stderr


def test_config_file_with_etcd_seeds_an_empty_prefix_and_a_different_file_is_refused_at_start(
    router_factory, etcd_env, upstream, tmp_path
):
    path = write_config(tmp_path, full_document(upstream, tmp_path / "token"), "seed.yaml")
    (tmp_path / "token").write_text(FILE_TOKEN)
    a = router_factory(env=etcd_env, args=("--config", str(path)))
    assert chat(a, "env-model").status_code == 200  # seeded: the file's key and route
    b = router_factory(env=etcd_env, args=("--config", str(path)))  # the same file: it matches, b starts
    assert chat(b, "env-model").status_code == 200

    changed = httpx.put(
        a.base_url + "/v1/admin/backends/b-env",
        headers={"X-API-Key": ADMIN_SECRET},
        json={"base_url": upstream.openai_base_url, "models": ["cfg-model"], "timeout_ms": 9000},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    with pytest.raises(ServiceStartError) as refused:
        router_factory(env=etcd_env, args=("--config", str(path)))
    assert "differs from the config in etcd" in str(refused.value) and "backends/b-env" in str(refused.value)


def test_a_missing_credential_is_named_in_readiness_and_a_refused_one_is_a_clear_backend_error(
    router_factory, upstream, tmp_path
):
    document = full_document(upstream, tmp_path / "absent-token-file")
    del document["backend_states"]
    path = write_config(tmp_path, document, "creds.yaml")
    router = router_factory(env={"UPSTREAM_TOKEN": ENV_TOKEN}, args=("--config", str(path)))

    ready = httpx.get(router.base_url + "/v1/status/readyz", timeout=5).json()
    check = next(c for c in ready["checks"] if c["name"] == "credentials")
    assert check["status"] == "warn" and f"b-file (file {tmp_path / 'absent-token-file'})" in check["details"]
    missing = chat(router, "file-model")
    assert missing.status_code == 503 and upstream.inference_requests == 0

    upstream.configure(fixed_status=401)
    refused = chat(router, "env-model")
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "BACKEND_ERROR"
    assert "refused the router's credentials" in refused.json()["error"]["message"]
    log = router.log_text()
    assert "backend_credentials_refused" in log and "environment variable UPSTREAM_TOKEN" in log
    assert ENV_TOKEN not in log
