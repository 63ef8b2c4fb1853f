"""Static settings: the only place that reads the environment (prefix ROUTER_)."""

from __future__ import annotations

from pathlib import Path

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
    # Slow clients must not hold a worker: uvicorn closes idle keep-alive connections after this.
    keep_alive_seconds: int = Field(5, ge=1)

    redis_url: str | None = None
    etcd_endpoints: str | None = None
    kafka_bootstrap: str | None = None

    secret_key: SecretStr | None = None

    build_version: str = "0.1.0"
    build_commit: str = "unknown"
    build_time: str = "unknown"
