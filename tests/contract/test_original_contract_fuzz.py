"""schemathesis with the ORIGINAL contract (../shared/seed/api-router.openapi.yaml) against a live
router: clients generated from it work unchanged.

The original has gaps of its own: it documents no 400 although any request can be malformed, no
401 on the audit lookup although its global security requires a key, and none of the statuses its
own descriptions imply (403 scope, 404 unknown model, 409 idempotency token reused with another
body, 413/415). ``ORIGINAL_GAPS`` adds exactly those, with the original's ``ErrorResponse``, to a copy
of the original; every other part of it is checked as written, with every check, and must pass.
docs/architecture.md ("Compatibility with the original contract") lists the same departures.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.config_docs import key_record, write_config
from tests.harness.router_proc import RouterFleet

ORIGINAL = Path(__file__).resolve().parents[3] / "shared" / "seed" / "api-router.openapi.yaml"
FUZZ_KEY = "rk_original_fuzz_key"
SEED = 20261206
EXAMPLES = int(os.environ.get("ROUTER_ORIGINAL_FUZZ_EXAMPLES", "60"))
MAX_SECONDS = 20  # the schemathesis run itself: a check of compatibility, not a deep fuzz

# Statuses the original leaves out, per operation, that the router answers by design.
ORIGINAL_GAPS: dict[str, tuple[str, ...]] = {
    "routeInference": ("400", "403", "404", "409", "413", "415"),
    "getAuditByRequest": ("400", "401", "403"),
    "getHealth": (),
    "getReadiness": (),
}


def original_with_gaps_documented() -> dict[str, Any]:
    spec = yaml.safe_load(ORIGINAL.read_text())
    filled = copy.deepcopy(spec)
    error = {
        "description": "Documented here by the router's compatibility test (a gap of the original).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    seen = set()
    for path_item in filled["paths"].values():
        for operation in path_item.values():
            operation_id = operation["operationId"]
            seen.add(operation_id)
            for status in ORIGINAL_GAPS[operation_id]:
                assert status not in operation["responses"], f"{operation_id} {status} is not a gap"
                operation["responses"][status] = error
    assert seen == set(ORIGINAL_GAPS)
    return filled


@pytest.mark.skipif(not ORIGINAL.exists(), reason="the original contract is not here")
@pytest.mark.timeout(240)
def test_the_original_contract_passes_every_check_but_its_own_gaps(tmp_path):
    key = key_record("k-original", "org-original", FUZZ_KEY, ["inference", "audit"])
    config = write_config(tmp_path, {"api_keys": [key]}, "config.yaml")
    spec = tmp_path / "original-with-gaps.yaml"
    spec.write_text(yaml.safe_dump(original_with_gaps_documented(), sort_keys=False))
    fleet = RouterFleet(tmp_path / "routers")
    try:
        # Demo mode serves model "demo", which the examples below use.
        router = fleet.start(
            env={"ROUTER_CONFIG_PATH": str(config), "ROUTER_ACCESS_LOG": "false"}, args=("--demo",)
        )
        started = time.monotonic()
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                str(spec),
                "--url",
                router.base_url,
                "--checks",
                "all",
                "--seed",
                str(SEED),
                "--max-examples",
                str(EXAMPLES),
                "--max-time",
                str(MAX_SECONDS),
                "--header",
                f"X-API-Key: {FUZZ_KEY}",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        took = time.monotonic() - started
    finally:
        fleet.close()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12000:]
    print(
        f"original contract: {took:.0f} s; "
        + " ".join(line for line in output.splitlines() if "generated" in line)
    )
