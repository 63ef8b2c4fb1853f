"""Demo mode's runtime config: model "demo" on one upstream, an inference key and an admin key."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from decimal import Decimal

from router_impl.auth.keys import ApiKeyRecord, hash_secret
from router_impl.config.model import BackendConfig, ModelPolicy, ModelPricing, RuntimeConfig, WeightedBackend
from router_impl.demo.answers import DEMO_MODEL
from router_impl.settings import Settings

DEMO_ORG = "demo-org"
DEMO_BACKEND = "demo-upstream"
# The defaults of ROUTER_DEMO_API_KEY and ROUTER_DEMO_ADMIN_KEY: printed in the README, so public.
WELL_KNOWN_KEYS = frozenset({"rk-demo-key", "rk-demo-admin-key"})


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def demo_bind_refusal(settings: Settings) -> str | None:
    """``public_demo_refusal`` for the settings' host and demo keys; None outside demo mode."""
    if not settings.demo:
        return None
    keys = (settings.demo_api_key.get_secret_value(), settings.demo_admin_key.get_secret_value())
    return public_demo_refusal(settings.host, keys, settings.demo_allow_public)


def public_demo_refusal(host: str, keys: Iterable[str], allow_public: bool) -> str | None:
    """Why demo mode must not serve on ``host``, or None: its well-known keys (one is an admin key)
    are safe on loopback only, unless the operator says otherwise (ROUTER_DEMO_ALLOW_PUBLIC)."""
    if allow_public or is_loopback(host) or WELL_KNOWN_KEYS.isdisjoint(keys):
        return None
    return (
        f"demo mode refuses to listen on {host}: its well-known keys (rk-demo-key, rk-demo-admin-key) "
        "would let anyone who can reach it in, as an admin. Bind 127.0.0.1, set ROUTER_DEMO_API_KEY and "
        "ROUTER_DEMO_ADMIN_KEY to secrets of your own, or pass --demo-allow-public "
        "(ROUTER_DEMO_ALLOW_PUBLIC=true) to accept the risk."
    )


def openai_base_url(url: str) -> str:
    """Accept an upstream given with or without its /v1 suffix, as OpenAI clients' base_url has it."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def demo_config(
    base: RuntimeConfig, *, upstream_url: str, api_key: str, admin_key: str, upstream_model: str | None = None
) -> RuntimeConfig:
    """``base`` (the --config file, if any) plus the demo backend, model and keys. Model "demo" is
    sent upstream as ``upstream_model`` when given (the name a real server knows its model by)."""
    backend = BackendConfig(
        id=DEMO_BACKEND, base_url=openai_base_url(upstream_url), models=(upstream_model or DEMO_MODEL,)
    )
    model = ModelPolicy(
        model=DEMO_MODEL,
        backends=(WeightedBackend(backend_id=DEMO_BACKEND, weight=100, upstream_model=upstream_model),),
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
