"""Runtime-config documents as an operator writes them (YAML), for tests that start routers: API-key
entries, backends, model policies (one with a failover-only standby), and the file a router reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from router_impl.auth.keys import hash_secret
from router_impl.config.model import RuntimeConfig


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


def backend_doc(backend_id: str, base_url: str, *models: str, **extra: Any) -> dict[str, Any]:
    """A ``backends`` entry: ``backend_id`` at ``base_url`` (OpenAI base: ``.../v1``), serving ``models``."""
    return {"id": backend_id, "base_url": base_url, "models": list(models), **extra}


def model_doc(model: str, *backend_ids: str, weight: int | None = 100, **extra: Any) -> dict[str, Any]:
    """A ``models`` entry: ``model`` on ``backend_ids``, each at ``weight`` (None: the default weight)."""
    backends = [
        {"backend_id": b} if weight is None else {"backend_id": b, "weight": weight} for b in backend_ids
    ]
    return {"model": model, "backends": backends, **extra}


def failover_model(model: str, primary: str, standby: str, **extra: Any) -> dict[str, Any]:
    """A ``models`` entry: ``model`` on ``primary`` (weight 100), ``standby`` (weight 0) failover only."""
    backends = [{"backend_id": primary, "weight": 100}, {"backend_id": standby, "weight": 0}]
    return {"model": model, "backends": backends, **extra}


def write_config(
    directory: Path, config: Mapping[str, Any] | RuntimeConfig, name: str = "router.yaml"
) -> Path:
    """``config`` (a document, or the objects) as YAML in ``directory``; its path (for
    ROUTER_CONFIG_PATH or ``--config``)."""
    document = config.model_dump(mode="json") if isinstance(config, RuntimeConfig) else dict(config)
    path = directory / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path
