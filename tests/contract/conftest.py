"""Fixtures of the contract suites: fresh routers for each fuzzing seed."""

from __future__ import annotations

import pytest
import yaml

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from tests.contract.fuzzing import FUZZ_KEY, ROUTERS


@pytest.fixture
def live_routers(tmp_path_factory):
    """Fresh routers per seed, by name (ROUTERS): admin writes grow the config, and each write re-reads it."""
    from tests.harness.router_proc import RouterFleet

    key = ApiKeyRecord(
        id="k-fuzz",
        organization_id="org-fuzz",
        key_hash=hash_secret(FUZZ_KEY),
        scopes={"inference", "audit", "admin"},
    )
    fleet = RouterFleet(tmp_path_factory.mktemp("routers"))
    routers = {}
    for name in ROUTERS:
        config = tmp_path_factory.mktemp(f"fuzz-{name}") / "config.yaml"
        config.write_text(yaml.safe_dump({"api_keys": [key.model_dump(mode="json")]}))
        # Demo mode adds model "demo" on the built-in upstream, so generated requests that name it succeed.
        routers[name] = fleet.start(
            env={"ROUTER_CONFIG_PATH": str(config), "ROUTER_ACCESS_LOG": "false"}, args=("--demo",)
        )
    yield {name: router.base_url for name, router in routers.items()}
    fleet.close()
