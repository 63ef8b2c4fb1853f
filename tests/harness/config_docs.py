"""Runtime-config documents as an operator writes them (YAML), for tests that start routers: API-key
entries, a model with a failover-only standby, and the file a router reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from router_impl.auth.keys import hash_secret


def key_record(
    key_id: str, org: str, secret: str, scopes: Sequence[str] = ("inference",), **extra: Any
) -> dict[str, Any]:
    """An ``api_keys`` entry: the secret only as its hash."""
    return {
        "id": key_id,
        "organization_id": org,
        "key_hash": hash_secret(secret),
        "scopes": list(scopes),
        **extra,
    }


def failover_model(model: str, primary: str, standby: str, **extra: Any) -> dict[str, Any]:
    """A ``models`` entry: ``model`` on ``primary`` (weight 100), ``standby`` (weight 0) failover only."""
    backends = [{"backend_id": primary, "weight": 100}, {"backend_id": standby, "weight": 0}]
    return {"model": model, "backends": backends, **extra}


def write_config(directory: Path, config: Mapping[str, Any], name: str = "router.yaml") -> Path:
    """``config`` as YAML in ``directory``; its path (for ROUTER_CONFIG_PATH or ``--config``)."""
    path = directory / name
    path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
    return path
