"""Limits fixtures: two routers sharing the session's Redis on the limits config (``pair``, built once
for this package). A Redis of a test's own (``own_redis``) is a fixture of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import (
    ObservedBackend,
    runtime_config,
)
from tests.e2e.limits.limits_support import LIMITS, key_record_of
from tests.harness.backend import MockBackend
from tests.harness.router_proc import RouterProcess
from tests.harness.services import RedisServer


@pytest.fixture(scope="package")
def limits_config(
    tmp_path_factory: pytest.TempPathFactory, backend_a: ObservedBackend, backend_f: MockBackend
) -> Path:
    config = runtime_config(backend_a, backend_f)
    config["api_keys"].extend(key_record_of(org) for org in (*LIMITS, "org-put", "org-external"))
    config["org_limits"] = LIMITS
    path = tmp_path_factory.mktemp("limits-config") / "router.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="package")
def pair(
    start_router: Callable[..., RouterProcess], redis_server: RedisServer, limits_config: Path
) -> tuple[RouterProcess, RouterProcess]:
    env = {"ROUTER_REDIS_URL": redis_server.url, "ROUTER_CONFIG_POLL_SECONDS": "0.2"}
    return start_router(env=env, config=limits_config), start_router(env=env, config=limits_config)
