"""The contract pipeline: generated/ is fresh, byte-identical run to run, and stubs are reported."""

import subprocess
import sys
from pathlib import Path

import yaml
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS

from router_impl.errors import CATALOG

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import codegen  # noqa: E402


def test_generation_is_byte_identical_run_to_run(tmp_path):
    codegen.generate(tmp_path / "a")
    codegen.generate(tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_checked_in_generated_code_is_up_to_date():
    result = subprocess.run(
        [sys.executable, "tools/codegen.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_strict_check_fails_exactly_when_an_operation_is_on_a_stub():
    stubs = [op.operation_id for op in OPERATIONS.values() if op.stub]
    result = subprocess.run(
        [sys.executable, "tools/codegen.py", "--check", "--strict"], cwd=ROOT, capture_output=True, text=True
    )
    assert (result.returncode != 0) == bool(stubs)
    for operation_id in stubs:
        assert operation_id in result.stdout


def test_written_handlers_are_bound_and_missing_ones_are_stubbed():
    assert OPERATIONS["getHealth"].handler == "router_impl.handlers.status.get_health"
    assert not OPERATIONS["getHealth"].stub
    for op in OPERATIONS.values():
        assert op.handler.endswith("." + codegen.snake(op.operation_id))
        assert op.stub == op.handler.startswith("router_contract.stubs.")


def test_every_authenticated_operation_names_its_scope():
    spec = yaml.safe_load(SPEC_PATH.read_text())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            authenticated = bool(op.get("security", spec.get("security")))
            assert authenticated == (OPERATIONS[op["operationId"]].scope is not None), (method, path)


def test_error_catalog_matches_the_contract_error_codes():
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert set(spec["components"]["schemas"]["ErrorCode"]["enum"]) == set(CATALOG)


def test_snake_case_of_operation_ids():
    assert codegen.snake("routeInference") == "route_inference"
    assert codegen.snake("getAuditByRequest") == "get_audit_by_request"
    assert codegen.snake("backendId") == "backend_id"
