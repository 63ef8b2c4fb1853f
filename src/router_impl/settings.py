"""Static settings: the only place that reads the environment (prefix ROUTER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")
    access_log: bool = True

    config_path: Path | None = None
    data_dir: Path = Path(".router-data")

    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Serve the hot operations' certain happy path without Connexion's per-request plumbing
    # (web/middleware/fast_lane.py); off gives the plain Connexion path, byte for byte the same.
    fast_lane: bool = True
    # Slow clients must not hold a worker: uvicorn closes idle keep-alive connections after this.
    keep_alive_seconds: int = Field(5, ge=1)

    redis_url: str | None = None
    # Comma-separated host:port list; the runtime config then lives under etcd_prefix, one key per object.
    etcd_endpoints: str | None = None
    etcd_prefix: str = "/api-router/"
    etcd_timeout_seconds: float = Field(2.0, gt=0, le=60)
    # How long start-up waits for the config source before serving the last known good copy.
    config_start_timeout_seconds: float = Field(5.0, gt=0, le=300)
    config_poll_seconds: float = Field(1.0, gt=0, le=3600)
    kafka_bootstrap: str | None = None

    # Encrypts per-key signing secrets at rest; without it a key file is generated in data_dir.
    secret_key: SecretStr | None = None
    signature_window_seconds: int = Field(300, ge=1, le=3600)

    idempotency_store: Literal["lmdb", "memory"] = "lmdb"
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1)
    idempotency_lease_seconds: int = Field(120, ge=1)

    key_store_map_size_bytes: int = Field(1 << 30, ge=1 << 20)
    nonce_max_entries: int = Field(100_000, ge=1_000)
    idempotency_max_entries: int = Field(100_000, ge=100)
    idempotency_map_size_bytes: int = Field(1 << 30, ge=1 << 20)

    # External identity service (openapi/external/identity.yaml); keys are then validated there.
    identity_url: str | None = None
    identity_token: SecretStr | None = None
    identity_positive_ttl_seconds: float = Field(60, gt=0, le=86_400)
    identity_negative_ttl_seconds: float = Field(5, ge=0, le=3_600)
    identity_stale_window_seconds: float = Field(900, ge=0)
    identity_timeout_seconds: float = Field(2.0, gt=0, le=30)
    identity_revocation_poll_seconds: float = Field(5.0, gt=0)

    # One request's whole budget across failover attempts; each attempt is also bounded by its
    # backend's timeout_ms.
    request_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    breaker_cool_down_seconds: float = Field(10.0, gt=0, le=3600)

    redis_timeout_seconds: float = Field(0.5, gt=0, le=10)
    redis_max_connections: int = Field(64, ge=1, le=10_000)

    # Demo mode: a built-in upstream serving model "demo" and two keys (see README).
    demo: bool = False
    demo_api_key: SecretStr = SecretStr("rk-demo-key")
    demo_admin_key: SecretStr = SecretStr("rk-demo-admin-key")
    demo_upstream: str | None = None

    build_version: str = "0.1.0"
    build_commit: str = "unknown"
    build_time: str = "unknown"
