"""Demo mode's runtime config: model "demo" on one upstream, an inference key and an admin key."""

from __future__ import annotations

from decimal import Decimal

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.config.model import BackendConfig, ModelPolicy, ModelPricing, RuntimeConfig, WeightedBackend
from router_impl.demo.answers import DEMO_MODEL

DEMO_ORG = "demo-org"
DEMO_BACKEND = "demo-upstream"


def openai_base_url(url: str) -> str:
    """Accept an upstream given with or without its /v1 suffix, as OpenAI clients' base_url has it."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def demo_config(base: RuntimeConfig, *, upstream_url: str, api_key: str, admin_key: str) -> RuntimeConfig:
    """``base`` (the --config file, if any) plus the demo backend, model and keys."""
    backend = BackendConfig(id=DEMO_BACKEND, base_url=openai_base_url(upstream_url), models=(DEMO_MODEL,))
    model = ModelPolicy(
        model=DEMO_MODEL,
        backends=(WeightedBackend(backend_id=DEMO_BACKEND, weight=100),),
        pricing=ModelPricing(
            input_usd_per_1m_tokens=Decimal("0.50"), output_usd_per_1m_tokens=Decimal("1.50")
        ),
    )
    keys: tuple[ApiKeyRecord, ...] = (
        ApiKeyRecord(
            id="key_demo",
            organization_id=DEMO_ORG,
            key_hash=hash_secret(api_key),
            scopes=frozenset({"inference", "audit"}),
            name="demo inference key",
        ),
        ApiKeyRecord(
            id="key_demo_admin",
            organization_id=DEMO_ORG,
            key_hash=hash_secret(admin_key),
            scopes=frozenset({"admin"}),
            name="demo admin key",
        ),
    )
    # A demo key revoked through the admin API is a record in the source: that one wins.
    stored = {k.id for k in base.api_keys}
    keys = tuple(k for k in keys if k.id not in stored)
    # Every field of the base carries over (limits, states, ...); only the three lists grow.
    fields = {name: getattr(base, name) for name in RuntimeConfig.model_fields}
    fields.update(
        backends=(*base.backends, backend),
        models=(*base.models, model),
        api_keys=(*base.api_keys, *keys),
    )
    return RuntimeConfig(**fields)
