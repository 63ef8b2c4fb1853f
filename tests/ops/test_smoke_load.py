"""`tools/smoke.py` and `tools/load.py` against a demo router, as operators run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.backend import MockBackend
from tests.harness.config_docs import backend_doc, key_record, model_doc, write_config
from tests.harness.router_proc import RouterFleet, RouterProcess

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tools" / "smoke.py"
LOAD = REPO / "tools" / "load.py"
DEMO_KEY = "rk-demo-key"
DEMO_ADMIN_KEY = "rk-demo-admin-key"


@pytest.fixture(scope="module")
def demo_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One demo router for the module (the machinery of `router_factory`, shared to keep the tests short)."""
    fleet = RouterFleet(tmp_path_factory.mktemp("ops-demo"))
    try:
        yield fleet.start(args=("--demo",))
    finally:
        fleet.close()


def run_tool(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, str(script), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=45,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_smoke_passes_against_the_demo_router(demo_router: RouterProcess) -> None:
    result = run_tool(
        SMOKE,
        "--url",
        demo_router.base_url,
        env={"ROUTER_API_KEY": DEMO_KEY, "ROUTER_ADMIN_KEY": DEMO_ADMIN_KEY},
    )
    assert result.returncode == 0, explain(result)
    for check in ("healthz", "readyz", "auth failure", "chat completion", "chat stream", "inference"):
        assert f"ok    {check}" in result.stdout, explain(result)
    assert "ok    invalid request        400 VALIDATION_ERROR" in result.stdout
    assert "ok    metrics" in result.stdout
    assert "ok    admin backends" in result.stdout
    assert "demo-upstream PRIMARY" in result.stdout  # the routing headers


def test_smoke_fails_with_a_wrong_key(demo_router: RouterProcess) -> None:
    result = run_tool(SMOKE, "--url", demo_router.base_url, "--api-key", "rk-not-the-demo-key")
    assert result.returncode == 1, explain(result)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1, explain(result)
    assert "models" in failures[0] and "401" in failures[0] and "INVALID_API_KEY" in failures[0]


def test_smoke_fails_when_the_router_is_unreachable() -> None:
    result = run_tool(SMOKE, "--url", "http://127.0.0.1:9", "--api-key", DEMO_KEY, "--timeout", "2")
    assert result.returncode == 1, explain(result)
    assert "cannot reach the router" in result.stdout


def test_smoke_proves_a_rate_limit_denial(demo_router: RouterProcess) -> None:
    result = run_tool(
        SMOKE,
        "--url",
        demo_router.base_url,
        "--check-limits",
        env={"ROUTER_API_KEY": DEMO_KEY, "ROUTER_ADMIN_KEY": DEMO_ADMIN_KEY},
    )
    assert result.returncode == 0, explain(result)
    assert "ok    rate-limit denial      429 RATE_LIMIT_EXCEEDED" in result.stdout


def test_smoke_proves_a_rate_limit_denial_on_a_config_file_router(
    router_factory: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    """--check-limits end to end where organisation limits apply: a router on a runtime-config file."""
    with MockBackend(models=("smoke-model",)) as backend:
        config = {
            "backends": [backend_doc("smoke-a", f"{backend.base_url}/v1", "smoke-model")],
            "models": [model_doc("smoke-model", "smoke-a")],
            "api_keys": [
                key_record("key-user", "org-1", "rk_smoke_user"),
                key_record("key-admin", "org-1", "rk_smoke_admin", ["admin"]),
            ],
        }
        path = write_config(tmp_path, config)
        router = router_factory(env={"ROUTER_CONFIG_PATH": str(path)})
        result = run_tool(
            SMOKE,
            "--url",
            router.base_url,
            "--check-limits",
            env={"ROUTER_API_KEY": "rk_smoke_user", "ROUTER_ADMIN_KEY": "rk_smoke_admin"},
        )
    assert result.returncode == 0, explain(result)
    assert "ok    rate-limit denial      429 RATE_LIMIT_EXCEEDED after 1 allowed" in result.stdout
    assert "smoke-a PRIMARY" in result.stdout


def test_load_meets_the_slos(demo_router: RouterProcess, tmp_path: Path) -> None:
    report_path = tmp_path / "load.json"
    result = run_tool(
        LOAD,
        "--url",
        demo_router.base_url,
        "--rps",
        "50",
        "--duration",
        "3",
        "--json",
        str(report_path),
        env={"ROUTER_API_KEY": DEMO_KEY},
    )
    assert result.returncode == 0, explain(result)
    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    assert report["sent"] == 150
    assert report["errors"] == 0
    assert report["achieved_rps"] >= 40
    assert report["statuses"] == {"200": 150}
    assert {slo["name"] for slo in report["slos"]} == {"latency p50", "latency p95", "error rate"}
    assert "SLOs met" in result.stdout


def test_load_exits_non_zero_on_an_slo_breach(demo_router: RouterProcess) -> None:
    result = run_tool(
        LOAD,
        "--url",
        demo_router.base_url,
        "--endpoint",
        "inference",
        "--rps",
        "20",
        "--duration",
        "1",
        "--slo-p50-ms",
        "0.001",  # no router answers within a microsecond
        env={"ROUTER_API_KEY": DEMO_KEY},
    )
    assert result.returncode == 1, explain(result)
    assert "SLO FAIL  latency p50" in result.stdout
    assert "SLO PASS  error rate" in result.stdout
