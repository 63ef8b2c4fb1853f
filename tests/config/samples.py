"""Small runtime-config objects for the config tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from router_impl.auth.keys import ApiKeyRecord
from router_impl.config.model import (
    BackendConfig,
    BackendState,
    ModelPolicy,
    OrgOverride,
    RuntimeConfig,
    WeightedBackend,
)

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def backend(backend_id: str, url: str | None = None) -> BackendConfig:
    return BackendConfig(id=backend_id, base_url=url or f"http://{backend_id}.internal:8000", models=("m",))


def model(name: str, *backend_ids: str, aliases: tuple[str, ...] = ()) -> ModelPolicy:
    return ModelPolicy(
        model=name,
        backends=tuple(WeightedBackend(backend_id=b, weight=100) for b in backend_ids),
        aliases=aliases,
    )


def key(key_id: str, org: str = "org-1") -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        organization_id=org,
        key_hash=hashlib.sha256(key_id.encode()).hexdigest(),
        scopes=frozenset({"inference"}),
        created_at=NOW,
    )


def sample_config() -> RuntimeConfig:
    """Objects in key order (so a round trip through the object layout gives an equal config)."""
    return RuntimeConfig(
        backends=(backend("gpu-a"), backend("gpu-b")),
        models=(
            model("llama-3-8b", "gpu-a", aliases=("llama",)),
            ModelPolicy(
                model="org/mixtral:8x7b",
                backends=(
                    WeightedBackend(backend_id="gpu-a", weight=30),
                    WeightedBackend(backend_id="gpu-b"),
                ),
                org_overrides={"acme": OrgOverride(backends=(WeightedBackend(backend_id="gpu-b"),))},
            ),
        ),
        api_keys=(key("key-1"), key("key-2", org="org-2")),
        backend_states={"gpu-b": BackendState(state="degraded", reason="slow", updated_at=NOW)},
    )
