"""Static settings: the only place that reads the environment (prefix ROUTER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
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

    # Body cap of /v1/inference (the envelope's payload), the admin API and every other route.
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Body cap of the OpenAI-compatible routes: long-context prompts and images as data URLs.
    openai_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    # A request body not fully received within this is refused (400): slow uploads hold no task.
    body_timeout_seconds: float = Field(30.0, gt=0, le=600)
    # Serve the hot operations' certain happy path without Connexion's per-request plumbing
    # (web/middleware/fast_lane.py); off gives the plain Connexion path, byte for byte the same.
    fast_lane: bool = True
    # Slow clients must not hold a worker: uvicorn closes idle keep-alive connections after this,
    # and a new connection that sends nothing.
    keep_alive_seconds: int = Field(5, ge=1)
    # Unauthenticated DoS limits of the HTTP server, enforced as the bytes arrive
    # (web/http_protocol.py): a request head (request line + header lines) over max_header_bytes or
    # with more than max_header_fields lines is 431; one not complete within header_timeout_seconds
    # is refused and closed. Past max_connections per worker a new connection closes the one
    # waiting longest for a request head (503 when all are busy); `router serve` raises the process's
    # open-file limit (ulimit -n) to its hard limit and warns when this does not fit in it.
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1 << 20)
    max_header_fields: int = Field(100, ge=10, le=10_000)
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)
    max_connections: int = Field(4096, ge=16, le=1_000_000)

    redis_url: str | None = None
    # Comma-separated host:port list; the runtime config then lives under etcd_prefix, one key per object.
    etcd_endpoints: str | None = None
    etcd_prefix: str = "/api-router/"
    etcd_timeout_seconds: float = Field(2.0, gt=0, le=60)
    # How long start-up waits for the config source before serving the last known good copy.
    config_start_timeout_seconds: float = Field(5.0, gt=0, le=300)
    config_poll_seconds: float = Field(1.0, gt=0, le=3600)
    kafka_bootstrap: str | None = None
    # Usage records and audit events: durable LMDB outbox in data_dir/outbox, published to Kafka
    # (kafka_bootstrap) or, without it, to JSON Lines files in data_dir/usage. Past outbox_max_bytes
    # (default: 24 h at 1k RPS of ~600-byte records) billable requests get 503 until it drains to 90 %.
    usage_topic: str = "usage.records.v1"
    audit_topic: str = "audit.events.v1"
    outbox_max_bytes: int = Field(64 * 1024**3, ge=1 << 20)
    # false: no fsync per group commit; survives a process kill, not a machine crash (benchmarks, dev).
    outbox_sync: bool = True
    outbox_drain_seconds: float = Field(10.0, ge=0, le=600)
    outbox_warn_age_seconds: float = Field(60.0, gt=0)
    outbox_warn_fraction: float = Field(0.5, gt=0, le=1)
    kafka_delivery_timeout_seconds: float = Field(30.0, gt=0, le=600)

    # Encrypts per-key signing secrets at rest; without it a key file is generated in data_dir.
    secret_key: SecretStr | None = None
    signature_window_seconds: int = Field(300, ge=1, le=3600)
    # The first admin key of an empty fleet: the SHA-256 hex of its secret (never the secret), from
    # the variable or a mounted file. Every replica serves it as key id `bootstrap-admin` (scope
    # admin) until a record with that id in the config source (its revocation) overrides it.
    bootstrap_admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    bootstrap_admin_key_sha256_file: Path | None = None
    bootstrap_admin_org: str = Field("operators", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

    idempotency_store: Literal["lmdb", "memory"] = "lmdb"
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1)
    idempotency_lease_seconds: int = Field(120, ge=1)

    # Audit trail (FR-14): events older than the retention are swept (LMDB) or expire (Redis).
    audit_retention_seconds: int = Field(30 * 86_400, ge=60)
    audit_map_size_bytes: int = Field(4 << 30, ge=1 << 20)

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

    # External budget service (openapi/external/budget.yaml); budgets are then defined there.
    budget_service_url: str | None = None
    budget_service_token: SecretStr | None = None
    budget_service_timeout_seconds: float = Field(2.0, gt=0, le=30)
    budget_service_negative_ttl_seconds: float = Field(30, ge=0, le=3_600)
    budget_service_stale_window_seconds: float = Field(900, ge=0)

    # One request's whole budget across failover attempts; each attempt is also bounded by its
    # backend's timeout_ms.
    request_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    breaker_cool_down_seconds: float = Field(10.0, gt=0, le=3600)

    # Organisations with budgets have max_tokens capped (clamped) at this unless their limits set
    # max_tokens_cap, so a reservation is a true worst case.
    limits_default_max_tokens_cap: int = Field(4096, ge=1, le=1_000_000)
    # A budget/token reservation is leased for request_timeout_seconds plus this margin (post-call work,
    # clock skew between replicas); a router killed mid-request has its reservations given back by the
    # organisation's first admit after the lease. A stream (bounded only by its backend's read timeout)
    # is leased for limits_stream_lease_seconds; one that runs longer is charged in full at its end.
    limits_lease_margin_seconds: float = Field(30.0, ge=0, le=3600)
    limits_stream_lease_seconds: float = Field(900.0, gt=0, le=86_400)

    # A Redis command (and connect) not answered within this fails: limits then follow the org's
    # failure mode, idempotency answers 503. Never a hung request.
    redis_timeout_seconds: float = Field(0.5, gt=0, le=10)
    redis_max_connections: int = Field(64, ge=1, le=10_000)
    # Waiting for a free pooled connection is local queueing under a burst, not Redis trouble.
    redis_pool_wait_seconds: float = Field(5.0, gt=0, le=60)

    # Demo mode: a built-in upstream serving model "demo" and two keys (see README).
    demo: bool = False
    demo_api_key: SecretStr = SecretStr("rk-demo-key")
    demo_admin_key: SecretStr = SecretStr("rk-demo-admin-key")
    demo_upstream: str | None = None
    # Demo mode with its well-known keys listens on loopback only, unless this says otherwise.
    demo_allow_public: bool = False
    # The model name ROUTER_DEMO_UPSTREAM serves (vLLM refuses others); clients still ask for "demo".
    demo_upstream_model: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

    # OpenTelemetry traces (telemetry/tracing.py), OTLP over HTTP/protobuf: on with tracing_enabled or
    # when the standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set (the exporter reads the other
    # OTEL_EXPORTER_OTLP_* options itself). A request is sampled at this ratio unless its caller's
    # traceparent decided; the rest cost a look-up per stage, not a span.
    tracing_enabled: bool = False
    tracing_sample_ratio: float = Field(0.1, ge=0, le=1)
    tracing_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "tracing_otlp_endpoint"
        ),
    )

    build_version: str = "0.1.0"
    build_commit: str = "unknown"
    build_time: str = "unknown"

    @model_validator(mode="after")
    def _workers_need_a_shared_store(self) -> Settings:
        # Each worker process would keep its own token buckets, budget ledger and replay window, so
        # N workers would admit N times the configured limits (measured: 4/min allowed 7 of 12).
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"--workers {self.workers} needs a shared limit store: set ROUTER_REDIS_URL. Without "
                "it every worker keeps its own rate limits, budgets and signature replay window, so "
                f"the limits would be multiplied by {self.workers}. Run one worker per process (and "
                "more pods), or point the router at Redis."
            )
        return self
