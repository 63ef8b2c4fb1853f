"""An operator manages keys with `router keys` against a live router: create, use, list, revoke."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterFleet, RouterProcess

ADMIN = "rk-demo-admin-key"
ROUTER_BIN = Path(sys.executable).with_name("router")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    fleet = RouterFleet(tmp_path_factory.mktemp("cli"))
    yield fleet.start(args=("--demo",))
    fleet.close()


def router_cli(router: RouterProcess, *args: str, admin_key: str = ADMIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROUTER_BIN), "keys", "--url", router.base_url, "--admin-key", admin_key, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def chat(router: RouterProcess, secret: str) -> httpx.Response:
    return httpx.post(
        router.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json=chat_body("demo", "cli made me"),
        timeout=10,
    )


def test_a_key_created_with_the_cli_works_until_the_cli_revokes_it(demo):
    created = router_cli(demo, "create", "--json", "--org", "acme", "--scope", "inference", "--name", "ci")
    assert created.returncode == 0, created.stderr
    answer = json.loads(created.stdout)
    secret, key_id = answer["secret"], answer["key"]["id"]
    assert chat(demo, secret).status_code == 200

    listed = json.loads(router_cli(demo, "list", "--json", "--org", "acme").stdout)
    assert [k["id"] for k in listed["items"]] == [key_id]
    assert secret not in json.dumps(listed)

    revoked = router_cli(demo, "revoke", key_id, "--json", "--reason", "rotated")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    refused = chat(demo, secret)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "INVALID_API_KEY")


def test_keys_print_tables_by_default(demo):
    created = router_cli(demo, "create", "--org", "tables", "--name", "table-key")
    assert created.returncode == 0, created.stderr
    fields = dict(row.split(maxsplit=1) for row in created.stdout.splitlines()[1:-1])
    assert fields["organization_id"] == "tables" and fields["secret"].startswith("rk_")
    assert created.stdout.splitlines()[-1] == "the secret is shown once: keep it now"
    header, row = router_cli(demo, "list", "--org", "tables").stdout.splitlines()
    assert header.split()[:3] == ["ID", "ORGANIZATION_ID", "NAME"]
    assert row.split()[:3] == [fields["id"], "tables", "table-key"]
    revoked = router_cli(demo, "revoke", fields["id"]).stdout.splitlines()
    assert ["revoked", "True"] in [r.split() for r in revoked]


def test_the_cli_reports_refusals_and_exits_non_zero(demo):
    wrong_key = router_cli(demo, "list", admin_key="rk-demo-key")  # inference scope, not admin
    assert wrong_key.returncode == 1 and '"FORBIDDEN"' in wrong_key.stderr
    unknown = router_cli(demo, "revoke", "key_does_not_exist")
    assert unknown.returncode == 1 and '"NOT_FOUND"' in unknown.stderr


def test_the_cli_says_when_the_router_is_unreachable():
    done = subprocess.run(
        [str(ROUTER_BIN), "keys", "--url", "http://127.0.0.1:9", "--admin-key", ADMIN, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "cannot reach the router" in done.stderr
