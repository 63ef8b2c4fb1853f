"""Fixtures of the contract suites: fresh routers for each fuzzing seed."""

from __future__ import annotations

import pytest

from tests.contract.fuzzing import FUZZ_KEY, ROUTERS
from tests.harness.config_docs import key_record, write_config


@pytest.fixture
def live_routers(tmp_path_factory):
    """Fresh routers per seed, by name (ROUTERS): admin writes grow the config, and each write re-reads it."""
    from tests.harness.router_proc import RouterFleet

    key = key_record("k-fuzz", "org-fuzz", FUZZ_KEY, ["inference", "audit", "admin"])
    fleet = RouterFleet(tmp_path_factory.mktemp("routers"))
    routers = {}
    for name in ROUTERS:
        config = write_config(tmp_path_factory.mktemp(f"fuzz-{name}"), {"api_keys": [key]}, "config.yaml")
        # Demo mode adds model "demo" on the built-in upstream, so generated requests that name it succeed.
        routers[name] = fleet.start(
            env={"ROUTER_CONFIG_PATH": str(config), "ROUTER_ACCESS_LOG": "false"}, args=("--demo",)
        )
    yield {name: router.base_url for name, router in routers.items()}
    fleet.close()
