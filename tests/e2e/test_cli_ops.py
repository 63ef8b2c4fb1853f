"""An operator uses the CLI, not curl: `router backends`, `router limits`, `router audit` print tables,
and `--json` the API's answer for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.bodies import chat_body
from tests.harness.router_proc import RouterFleet, RouterProcess

ROUTER_BIN = Path(sys.executable).with_name("router")
ADMIN, USER = "rk-demo-admin-key", "rk-demo-key"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    fleet = RouterFleet(tmp_path_factory.mktemp("ops-cli"))
    yield fleet.start(args=("--demo",))
    fleet.close()


def router(demo: RouterProcess, *args: str, key: str = ADMIN) -> subprocess.CompletedProcess[str]:
    command = [str(ROUTER_BIN), *args, "--url", demo.base_url, "--key", key]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_backends_list_is_a_table_and_json_for_scripts(demo):
    done = router(demo, "backends", "list")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split()[:3] == ["ID", "STATE", "BREAKER_STATE"]
    assert row.split()[:3] == ["demo-upstream", "healthy", "closed"]

    as_json = json.loads(router(demo, "backends", "list", "--json").stdout)
    assert [b["id"] for b in as_json["items"]] == ["demo-upstream"]


def test_a_state_change_the_router_refuses_prints_its_error_and_exits_1(demo):
    done = router(demo, "backends", "state", "no-such-backend", "disabled", "--reason", "maintenance")
    assert done.returncode == 1
    assert json.loads(done.stderr)["code"] == "NOT_FOUND"


def test_limits_reset_is_audited_and_audit_events_list_it(demo):
    reply = httpx.post(
        f"{demo.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER}"},
        json=chat_body("demo", "hi"),
        timeout=10,
    )
    assert reply.status_code == 200
    got = router(demo, "limits", "get", "demo-org")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("organisation demo-org\nSETTING")
    reset = router(demo, "limits", "reset", "demo-org", "--reason", "cli test", "--json")
    assert json.loads(reset.stdout)["organization_id"] == "demo-org"

    events = router(demo, "audit", "events", "--org", "demo-org", key=USER)
    assert events.returncode == 0, events.stderr
    lines = events.stdout.splitlines()
    assert lines[0].split()[:2] == ["TIMESTAMP", "ACTION"]
    actions = [line.split()[1] for line in lines[1:]]
    assert "LIMIT_RESET" in actions and "REQUEST_ALLOWED" in actions

    request_id = reply.headers["X-Request-ID"]
    one = json.loads(router(demo, "audit", "request", request_id, "--json", key=USER).stdout)
    assert one["request_id"] == request_id


def test_a_bad_filter_names_the_parameter_and_exits_1(demo):
    done = router(demo, "audit", "events", "--action", "BOGUS", key=USER)
    assert done.returncode == 1
    assert "query parameter 'action' must be one of" in done.stderr
