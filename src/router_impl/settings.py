"""Static settings: the only place that reads the environment (prefix ROUTER_).

Every field has a description: `docs/settings.md` is generated from them (tools/settings_doc.py;
`make settings-doc`, checked by `make check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (`0.0.0.0` in a container).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        1, ge=1, le=64, description="Worker processes; each builds its own app (metrics are aggregated)."
    )
    log_level: str = Field(
        "info", pattern="^(debug|info|warning|error)$", description="debug, info, warning or error."
    )
    access_log: bool = Field(True, description="One JSON access-log line per request.")

    config_path: Path | None = Field(
        None,
        description="Runtime-config YAML file, hot-reloaded (`router serve --config`); "
        "default: `<data dir>/runtime-config.yaml`, created by admin writes.",
    )
    data_dir: Path = Field(
        Path(".router-data"),
        description="LMDB stores (keys, idempotency, audit, config cache), the usage outbox and usage files.",
    )

    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Body cap (413 beyond) of `/v1/inference` (the envelope's payload), the admin API "
        "and every route but the OpenAI-compatible ones.",
    )
    openai_max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Body cap (413 beyond) of the OpenAI-compatible routes: long-context prompts, "
        "images as data URLs.",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="A request body not fully received within this is refused (400)."
    )
    # Serve the hot operations' certain happy path without Connexion's per-request plumbing
    # (web/middleware/fast_lane.py); off gives the plain Connexion path, byte for byte the same.
    fast_lane: bool = Field(
        True, description="Serve the hot operations' happy path in the fast lane; off: plain Connexion."
    )
    # Slow clients must not hold a worker: uvicorn closes idle keep-alive connections after this.
    keep_alive_seconds: int = Field(
        5,
        ge=1,
        description="Idle keep-alive connections, and new ones that send nothing, are closed after this.",
    )
    # Unauthenticated DoS limits of the HTTP server, enforced as the bytes arrive
    # (web/http_protocol.py). Past max_connections per worker a new connection closes the one
    # waiting longest for a request head (503 when all are busy); `router serve` raises the process's
    # open-file limit (ulimit -n) to its hard limit and warns when this does not fit in it.
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1 << 20,
        description="A request head (request line + header lines) over this is refused (431) as it arrives.",
    )
    max_header_fields: int = Field(
        100, ge=10, le=10_000, description="A request head with more header lines than this is refused (431)."
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="A request head not complete within this is refused and closed."
    )
    max_connections: int = Field(
        4096, ge=16, le=1_000_000, description="Open connections per worker (see web/http_protocol.py)."
    )
    api_docs: bool = Field(
        True, description="Serve the contract at `/openapi.json` and its Swagger UI at `/docs`."
    )

    redis_url: str | None = Field(
        None,
        description="Redis for rate limits, budgets, idempotency, signature nonces and the audit index, "
        "shared by every replica; default: in process and LMDB. With `redis_cluster`: one or more "
        "comma-separated node URLs of a Redis Cluster (the other nodes are discovered).",
    )
    # Redis Cluster (redis_cluster_mux.py): every key of one request's script shares a hash slot
    # ({org} hash tags, docs/architecture.md "Redis"), so a cluster scales the store past one Redis.
    redis_cluster: bool = Field(
        False,
        description="`redis_url` names Redis Cluster nodes (`redis://` or `rediss://`, database 0): "
        "commands go to the master of their keys' hash slot, following failovers.",
    )
    etcd_endpoints: str | None = Field(
        None, description="Comma-separated etcd `host:port` list; the runtime config then lives in etcd."
    )
    etcd_prefix: str = Field("/api-router/", description="etcd key prefix of the runtime config.")
    etcd_timeout_seconds: float = Field(2.0, gt=0, le=60, description="Timeout of one etcd call.")
    config_start_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How long start-up waits for the config source before serving the last known good copy.",
    )
    config_poll_seconds: float = Field(
        1.0, gt=0, le=3600, description="How often the config file is checked for changes."
    )
    kafka_bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers for usage records and audit events; "
        "default: JSON Lines files in `<data dir>/usage`.",
    )
    # Usage records and audit events: durable LMDB outbox in data_dir/outbox, published to Kafka
    # (kafka_bootstrap) or, without it, to JSON Lines files in data_dir/usage. Past outbox_max_bytes
    # (default: 24 h at 1k RPS of ~600-byte records) billable requests get 503 until it drains to 90 %.
    usage_topic: str = Field("usage.records.v1", description="Kafka topic of usage records.")
    audit_topic: str = Field("audit.events.v1", description="Kafka topic of audit events.")
    outbox_max_bytes: int = Field(
        64 * 1024**3,
        ge=1 << 20,
        description="Usage outbox cap (about 24 h at 1k RPS); past it billable requests get 503 "
        "until it drains to 90 %. Give the volume about 1.1 x this.",
    )
    # What an acknowledged usage record survives (usage/outbox.py; measured in bench/README.md).
    # process: committed to LMDB without fsync, i.e. in the kernel's page cache: survives a crash,
    # kill -9, OOM kill or container restart; lost if the machine fails (power, kernel panic) before
    # the kernel writes it back (about 30 s on Linux). machine: each group commit is fsynced (one
    # fsync serves all concurrent requests): survives that too, at ~1 ms more per request at c=1.
    # With the chart's per-pod volumes (emptyDir/ephemeral) a lost node takes the outbox anyway.
    outbox_durability: Literal["process", "machine"] = Field(
        "process",
        description="What an acknowledged usage record survives: `process` (written to the page cache: "
        "a killed or crashed process, a restarted container) or `machine` (fsynced group commit: "
        "also power loss and kernel panics; ~1 ms more per request at low concurrency).",
    )
    outbox_sync: bool | None = Field(
        None,
        description="Deprecated: `true` means `ROUTER_OUTBOX_DURABILITY=machine`, `false` `process`; "
        "ignored when `ROUTER_OUTBOX_DURABILITY` is set.",
    )
    outbox_drain_seconds: float = Field(
        10.0, ge=0, le=600, description="On SIGTERM, how long the outbox keeps publishing before exit."
    )
    outbox_warn_age_seconds: float = Field(
        60.0, gt=0, description="Readiness warns when the oldest unpublished record is older than this."
    )
    outbox_warn_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Readiness warns when the outbox holds more than this fraction of its cap.",
    )
    kafka_delivery_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="A Kafka delivery not confirmed within this is retried."
    )

    secret_key: SecretStr | None = Field(
        None,
        description="Encrypts signing secrets at rest (>= 32 characters); default: a key file "
        "generated in the data dir.",
    )
    signature_window_seconds: int = Field(
        300, ge=1, le=3600, description="Accepted clock skew of signed requests (`X-Signature-Timestamp`)."
    )
    # Every replica serves it as key id `bootstrap-admin` (scope admin) until a record with that id
    # in the config source (its revocation) overrides it.
    bootstrap_admin_key_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="The first admin key of an empty fleet: SHA-256 hex of its secret (never the secret).",
    )
    bootstrap_admin_key_sha256_file: Path | None = Field(
        None, description="A mounted file holding `bootstrap_admin_key_sha256`."
    )
    bootstrap_admin_org: str = Field(
        "operators",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="Organisation of the bootstrap admin key.",
    )

    idempotency_store: Literal["lmdb", "memory"] = Field(
        "lmdb", description="Idempotency store without Redis: `lmdb` (survives restarts) or `memory`."
    )
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1, description="How long stored replies are kept.")
    idempotency_lease_seconds: int = Field(
        120, ge=1, description="How long a request in progress holds its idempotency key."
    )

    # Audit trail (FR-14): events older than the retention are swept (LMDB) or expire (Redis).
    audit_retention_seconds: int = Field(
        30 * 86_400, ge=60, description="Audit events older than this are swept (LMDB) or expire (Redis)."
    )
    audit_map_size_bytes: int = Field(
        4 << 30, ge=1 << 20, description="Maximum size of the LMDB audit store."
    )

    key_store_map_size_bytes: int = Field(
        1 << 30, ge=1 << 20, description="Maximum size of the LMDB key store."
    )
    nonce_max_entries: int = Field(
        100_000, ge=1_000, description="Signature nonces remembered in process (without Redis)."
    )
    idempotency_max_entries: int = Field(
        100_000, ge=100, description="Entries of the in-memory idempotency store."
    )
    idempotency_map_size_bytes: int = Field(
        1 << 30, ge=1 << 20, description="Maximum size of the LMDB idempotency store."
    )

    identity_url: str | None = Field(
        None, description="External identity service (`openapi/external/identity.yaml`) that validates keys."
    )
    identity_token: SecretStr | None = Field(None, description="Bearer token for the identity service.")
    identity_positive_ttl_seconds: float = Field(
        60, gt=0, le=86_400, description="How long a key the identity service accepted is cached."
    )
    identity_negative_ttl_seconds: float = Field(
        5, ge=0, le=3_600, description="How long a key the identity service refused is cached."
    )
    identity_stale_window_seconds: float = Field(
        900, ge=0, description="While the identity service is down, cached keys keep working this long."
    )
    identity_timeout_seconds: float = Field(
        2.0, gt=0, le=30, description="Timeout of one identity-service call."
    )
    identity_revocation_poll_seconds: float = Field(
        5.0, gt=0, description="How often revocations are fetched from the identity service."
    )

    budget_service_url: str | None = Field(
        None,
        description="External budget service (`openapi/external/budget.yaml`) for organisations "
        "whose limits set no budgets.",
    )
    budget_service_token: SecretStr | None = Field(None, description="Bearer token for the budget service.")
    budget_service_timeout_seconds: float = Field(
        2.0, gt=0, le=30, description="Timeout of one budget-service call."
    )
    budget_service_negative_ttl_seconds: float = Field(
        30, ge=0, le=3_600, description="How long 'no budget for this organisation' is cached."
    )
    budget_service_stale_window_seconds: float = Field(
        900, ge=0, description="While the budget service is down, cached budgets are used this long."
    )

    request_timeout_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="One request's whole time across failover attempts (each also bounded by its "
        "backend's `timeout_ms`).",
    )
    breaker_cool_down_seconds: float = Field(
        10.0, gt=0, le=3600, description="How long an open circuit breaker waits before a trial request."
    )

    # Organisations with budgets have max_tokens capped (clamped) at this unless their limits set
    # max_tokens_cap, so a reservation is a true worst case.
    limits_default_max_tokens_cap: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="`max_tokens` is clamped to this for organisations with budgets whose limits set no "
        "`max_tokens_cap`.",
    )
    # A budget/token reservation is leased for request_timeout_seconds plus this margin (post-call work;
    # the term runs on Redis's clock, so replicas' skew does not shorten it); a router killed mid-request
    # has its reservations given back by the organisation's first admit after the lease. A stream
    # (bounded only by its backend's read timeout) is leased for limits_stream_lease_seconds; one that
    # runs longer is charged in full at its end.
    limits_lease_margin_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="A reservation is leased for the request timeout plus this; a killed router's "
        "reservations are given back after it.",
    )
    limits_stream_lease_seconds: float = Field(
        900.0, gt=0, le=86_400, description="Lease of a streamed request's reservation."
    )

    # A Redis command (and connect) not answered within this fails: limits then follow the org's
    # failure mode, idempotency answers 503. Never a hung request.
    redis_timeout_seconds: float = Field(
        0.5,
        gt=0,
        le=10,
        description="A Redis command not answered within this fails: limits follow the organisation's "
        "failure mode, idempotency answers 503.",
    )
    redis_max_connections: int = Field(64, ge=1, le=10_000, description="Redis connection pool size.")
    # Waiting for a free pooled connection is local queueing under a burst, not Redis trouble.
    redis_pool_wait_seconds: float = Field(
        5.0, gt=0, le=60, description="How long a request waits for a free pooled Redis connection."
    )

    # Demo mode: a built-in upstream serving model "demo" and two keys (see README).
    demo: bool = Field(False, description="Demo mode (`router serve --demo`): model `demo` and two keys.")
    demo_api_key: SecretStr = Field(SecretStr("rk-demo-key"), description="Demo mode's inference key.")
    demo_admin_key: SecretStr = Field(SecretStr("rk-demo-admin-key"), description="Demo mode's admin key.")
    demo_upstream: str | None = Field(
        None,
        description="Demo mode routes model `demo` to this OpenAI-compatible server; default: a built-in "
        "echo.",
    )
    demo_allow_public: bool = Field(
        False, description="Let demo mode, with its well-known keys, listen on a non-loopback address."
    )
    demo_upstream_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        description="The model name `demo_upstream` serves (vLLM refuses others); clients still ask "
        "for `demo`.",
    )

    # OpenTelemetry traces (telemetry/tracing.py), OTLP over HTTP/protobuf: on with tracing_enabled or
    # when the standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set (the exporter reads the other
    # OTEL_EXPORTER_OTLP_* options itself). A request is sampled at this ratio unless its caller's
    # traceparent decided; the rest cost a look-up per stage, not a span.
    tracing_enabled: bool = Field(
        False, description="Export OpenTelemetry traces (OTLP over HTTP); also on when an endpoint is set."
    )
    tracing_sample_ratio: float = Field(
        0.1, ge=0, le=1, description="Share of requests traced, unless the caller's `traceparent` decided."
    )
    tracing_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "tracing_otlp_endpoint"
        ),
        description="OTLP endpoint of traces (read from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or "
        "`OTEL_EXPORTER_OTLP_ENDPOINT`).",
    )

    build_version: str = Field("0.1.0", description="Version reported by health and metrics.")
    build_commit: str = Field("unknown", description="Commit reported by health and metrics.")
    build_time: str = Field("unknown", description="Build time reported by health.")

    @property
    def redis_urls(self) -> list[str]:
        """The Redis URL, or a Redis Cluster's seed node URLs."""
        return [url.strip() for url in (self.redis_url or "").split(",") if url.strip()]

    @model_validator(mode="after")
    def _redis_cluster_urls(self) -> Settings:
        urls = self.redis_urls
        if self.redis_cluster and not urls:
            raise ValueError(
                "ROUTER_REDIS_CLUSTER needs ROUTER_REDIS_URL: one or more Redis Cluster node URLs"
            )
        if len(urls) > 1 and not self.redis_cluster:
            raise ValueError(
                "ROUTER_REDIS_URL lists several URLs: set ROUTER_REDIS_CLUSTER=true for a Redis Cluster"
            )
        for url in urls if self.redis_cluster else ():
            parts = urlsplit(url)
            if parts.scheme not in ("redis", "rediss") or parts.path.strip("/") not in ("", "0"):
                raise ValueError(
                    "ROUTER_REDIS_URL in cluster mode: redis:// or rediss:// node URLs without a database "
                    "(a Redis Cluster has database 0 only)"
                )
        return self

    @model_validator(mode="after")
    def _durability_from_the_old_switch(self) -> Settings:
        if self.outbox_sync is not None and "outbox_durability" not in self.model_fields_set:
            self.outbox_durability = "machine" if self.outbox_sync else "process"
        return self

    @property
    def outbox_fsync(self) -> bool:
        """Whether outbox commits (and the JSON Lines files they are published to) are fsynced."""
        return self.outbox_durability == "machine"

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


def secret_value(value: SecretStr | None) -> str | None:
    """The plain value of an optional secret setting (for the client that sends it, never a log)."""
    return value.get_secret_value() if value is not None else None
