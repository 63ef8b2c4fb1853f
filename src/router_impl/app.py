"""Composition root: Settings -> components -> Connexion AsyncApp wrapped in our ASGI middleware.

Each port gets its embedded adapter unless its shared service is configured
(``ROUTER_REDIS_URL``, ``ROUTER_IDENTITY_URL``; etcd and Kafka follow in their issues).
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from connexion import AsyncApp
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS
from starlette.types import ASGIApp

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.fleet_keys import bootstrap_keys, import_legacy_keys, signing_refusal
from router_impl.auth.identity import IdentityServiceKeyStore
from router_impl.auth.keys import KeyStore
from router_impl.auth.nonces import MemoryNonceStore, NonceStore, RedisNonceStore
from router_impl.auth.secret_box import SecretBox
from router_impl.auth.signature_gate import SignatureGate
from router_impl.auth.signing import SignatureVerifier
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.components import Components
from router_impl.config.etcd_source import EtcdSource
from router_impl.config.file_source import FileSource, load_file
from router_impl.config.holder import ConfigHolder
from router_impl.config.lkg_cache import LastKnownGood
from router_impl.config.model import RuntimeConfig
from router_impl.config.seed import seed_from_file
from router_impl.config.service import ConfigService
from router_impl.config.source import ConfigSource
from router_impl.data_dir import private_data_dir
from router_impl.demo.config import demo_bind_refusal, demo_config
from router_impl.demo.upstream import start_demo_upstream
from router_impl.health import BuildInfo, CheckStatus, HealthCheck, HealthService
from router_impl.lifecycle import Lifecycle, every
from router_impl.limits.budget_service import BudgetServiceClient
from router_impl.limits.idempotency import IdempotencyStore
from router_impl.limits.idempotency_lmdb import LmdbIdempotencyStore
from router_impl.limits.idempotency_memory import MemoryIdempotencyStore
from router_impl.limits.idempotency_redis import RedisIdempotencyStore
from router_impl.limits.owners import OwnerRegistry
from router_impl.limits.service import LimitsService
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.limits.store_redis import RedisLimitStore
from router_impl.pipeline import Pipeline
from router_impl.redis_cluster_mux import ClusterMux
from router_impl.redis_mux import RedisAddress, RedisMux
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.decisions import DecisionLog
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import RoutingEngine
from router_impl.routing.health import BackendHealth
from router_impl.routing.prober import Prober
from router_impl.routing.readiness import BackendReadiness, assess, credentials_check
from router_impl.settings import Settings
from router_impl.shared_readiness import shared_store_checks
from router_impl.telemetry.logging import configure_logging
from router_impl.telemetry.metrics import BackendSample, Metrics, RouteNames, Sample
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.audit import AuditLog, ForwardedAuditLog
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.usage.audit_redis import RedisAuditLog
from router_impl.usage.wiring import UsageParts, build_usage
from router_impl.web.errors import error_handlers
from router_impl.web.middleware.api_docs import ApiDocsMiddleware, contract_pages, swagger_ui_dir
from router_impl.web.middleware.body_guard import BodyGuardMiddleware
from router_impl.web.middleware.fast_lane import FastLaneMiddleware, build_routes
from router_impl.web.middleware.path_guard import PathGuardMiddleware
from router_impl.web.middleware.request_context import RequestContextMiddleware
from router_impl.web.probe_guard import ProbeGuard
from router_impl.web.resolver import OperationTableResolver
from router_impl.web.security import security_map
from router_impl.web.validators import VALIDATORS

log = structlog.get_logger("router.app")

# Connexion's default stack minus Swagger UI and response validation (both off the hot path).
# Responses are validated in the tests, against what clients receive (openapi-core).
_CONNEXION_MIDDLEWARES = [
    ServerErrorMiddleware,
    ExceptionMiddleware,
    RoutingMiddleware,
    SecurityMiddleware,
    RequestValidationMiddleware,
    LifespanMiddleware,
    ContextMiddleware,
]


@dataclass(frozen=True)
class _SharedRedis:
    """redis-py for the occasional command; one pipelined connection (per master of a Redis Cluster)
    for the per-request scripts."""

    client: Redis | RedisCluster
    scripts: RedisMux | ClusterMux


def _redis(settings: Settings) -> _SharedRedis | None:
    if not settings.redis_url:
        return None
    if settings.redis_cluster:
        return _redis_cluster(settings)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1),
    )
    scripts = RedisMux.from_url(settings.redis_url, timeout=settings.redis_timeout_seconds)
    return _SharedRedis(Redis.from_pool(pool), scripts)


def _redis_cluster(settings: Settings) -> _SharedRedis:
    """The seeds' credentials and TLS serve every node; redis-py follows MOVED and failovers itself."""
    seeds = [RedisAddress.from_url(url) for url in settings.redis_urls]
    first = seeds[0]
    client = RedisCluster(
        startup_nodes=[ClusterNode(seed.host, seed.port) for seed in seeds],
        username=first.username,
        password=first.password,
        ssl=first.tls,
        ssl_cert_reqs="required" if first.verify_tls else "none",
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 1),
    )
    timeout = settings.redis_timeout_seconds
    return _SharedRedis(client, ClusterMux(seeds, timeout=timeout, connect_timeout=timeout))


def _ping(client: Redis | RedisCluster) -> Callable[[], Awaitable[object]]:
    """Readiness's PING: on a Redis Cluster every master answers (any one down fails its slots' requests)."""
    if isinstance(client, RedisCluster):
        return lambda: client.ping(target_nodes=RedisCluster.PRIMARIES)
    return client.ping


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _config_source(settings: Settings) -> ConfigSource:
    if settings.etcd_endpoints:
        endpoints = [e.strip() for e in settings.etcd_endpoints.split(",") if e.strip()]
        return EtcdSource(endpoints, settings.etcd_prefix, settings.etcd_timeout_seconds)
    path = settings.config_path or settings.data_dir / "runtime-config.yaml"
    return FileSource(path, settings.config_poll_seconds, missing_ok=settings.config_path is None)


def build_components(settings: Settings, *, tracing: Tracing | None = None) -> Components:
    """``tracing`` replaces the one the settings describe (tests pass an in-memory exporter)."""
    private_data_dir(settings.data_dir)
    if (refusal := demo_bind_refusal(settings)) is not None:  # also for launchers other than the CLI
        raise RuntimeError(refusal)
    lifecycle = Lifecycle()
    tracing = tracing or Tracing.from_settings(settings)
    lifecycle.on_stop(tracing.shutdown)  # registered first, so it runs last: after the outbox drain
    holder = ConfigHolder(RuntimeConfig())  # filled by the config service before serving starts
    overlay = _demo_overlay(settings, lifecycle) if settings.demo else None
    redis = _redis(settings)
    if redis is not None:
        lifecycle.on_stop(redis.client.aclose)
        lifecycle.on_stop(redis.scripts.aclose)

    box = SecretBox.from_settings(_secret(settings.secret_key), settings.data_dir)
    identity: IdentityServiceKeyStore | None = None
    key_admin: ConfigKeyStore | None = None
    store: KeyStore
    if settings.identity_url:
        identity = IdentityServiceKeyStore(
            settings.identity_url,
            _secret(settings.identity_token) or "",
            secret_box=box,
            positive_ttl=settings.identity_positive_ttl_seconds,
            negative_ttl=settings.identity_negative_ttl_seconds,
            stale_window=settings.identity_stale_window_seconds,
            timeout=settings.identity_timeout_seconds,
        )
        poll = settings.identity_revocation_poll_seconds
        lifecycle.background(lambda: identity.follow_revocations(poll))
        lifecycle.on_stop(identity.close)
        store = identity
    else:
        # Keys are config objects (keys/<id>): every replica follows the same source.
        key_admin = ConfigKeyStore(
            holder.current,
            lambda kind, object_id, obj: config_service.put(kind, object_id, obj),  # built below
            secret_box=box,
            local=bootstrap_keys(settings),
            signing_refusal=signing_refusal(settings),
        )
        store = key_admin

    nonces: NonceStore
    if redis is not None:
        nonces = RedisNonceStore(redis.client)
    else:
        nonces = MemoryNonceStore(settings.nonce_max_entries)
        if settings.workers > 1:
            log.warning(
                "signature_replay_window_per_worker", workers=settings.workers, hint="set ROUTER_REDIS_URL"
            )
    signatures = SignatureGate(
        box, SignatureVerifier(nonces, window_seconds=settings.signature_window_seconds)
    )
    authenticator = Authenticator(store)

    backends = BackendClient()
    lifecycle.on_stop(backends.close)
    metrics = Metrics(version=settings.build_version, commit=settings.build_commit)
    health = BackendHealth(
        time.monotonic,
        cool_down_s=settings.breaker_cool_down_seconds,
        on_open=lambda backend_id: metrics.breaker_opened.labels(backend=backend_id).inc(),
    )
    prober = Prober(health)
    lifecycle.background(lambda: prober.run(holder.current))
    decisions = DecisionLog()
    usage = build_usage(settings, lifecycle, on_round=metrics.observe_published)
    audit = ForwardedAuditLog(
        _audit(settings, redis, lifecycle),
        lambda key, value: usage.outbox.append(usage.audit_topic, key, value),
    )
    limits = _limits(settings, redis, holder, lifecycle, metrics)
    pipeline = Pipeline(
        config=holder.current,
        authenticator=authenticator,
        backends=backends,
        engine=RoutingEngine(health, random.Random()),  # noqa: S311 -- load spreading, not secrecy
        dispatcher=Dispatcher(backends, health, observe=metrics.observe_backend, tracer=tracing),
        decisions=decisions,
        idempotency=_idempotency(settings, redis, lifecycle),
        usage=usage.sink,
        request_timeout_seconds=settings.request_timeout_seconds,
        limits=limits,
        audit=audit,
        accepting=lambda: usage.outbox.accepting,
        on_routed=lambda model, decision: metrics.observe_decision(model, decision, decision == "FAILOVER"),
        tracer=tracing,
    )
    usage.publisher.tracer = tracing  # before it starts; build_usage does not take a tracer (yet)

    async def follow_snapshot(snapshot: RuntimeConfig) -> None:
        await backends.update(snapshot.backends)
        health.forget_except(b.id for b in snapshot.backends)

    source = _config_source(settings)
    config_service = ConfigService(
        source,
        holder,
        LastKnownGood(settings.data_dir / "config-lkg"),
        clock=lambda: datetime.now(UTC),
        on_apply=[follow_snapshot],
        overlay=overlay,
    )
    if isinstance(source, EtcdSource) and settings.config_path is not None:
        seed_path = settings.config_path
        seeding = load_file(seed_path)  # an unreadable or invalid file stops the start here
        lifecycle.on_start(lambda: seed_from_file(source, seeding, seed_path, settings.etcd_prefix))
    lifecycle.on_start(lambda: config_service.start(within=settings.config_start_timeout_seconds))
    if key_admin is not None:
        legacy_keys = settings.data_dir / "keys"  # where routers before keys-in-config kept them

        async def import_keys() -> None:
            await import_legacy_keys(legacy_keys, holder.current, config_service.put)

        lifecycle.on_start(import_keys)
    lifecycle.on_stop(config_service.stop)
    metrics.sample_from(lambda: _sample(holder.current(), health, usage, config_service, limits))
    lifecycle.background(every(5, _sync(metrics.refresh)))
    return Components(
        settings=settings,
        config=holder,
        authenticator=authenticator,
        signatures=signatures,
        key_admin=key_admin,
        identity=identity,
        health=_health(
            settings,
            config_service,
            identity,
            shared_store_checks(
                ping=_ping(redis.client) if redis is not None else None,
                limits=limits.readiness,
                idempotency_store=settings.idempotency_store,
            ),
            usage,
            lambda: assess(holder.current(), health),
            holder.current,
        ),
        pipeline=pipeline,
        config_service=config_service,
        health_registry=health,
        backend_client=backends,
        decisions=decisions,
        lifecycle=lifecycle,
        started_at=int(time.time()),
        metrics=metrics,
        probe_guard=ProbeGuard(),
        limits=limits,
        audit=audit,
        tracing=tracing,
    )


def _sample(
    config: RuntimeConfig,
    health: BackendHealth,
    usage: UsageParts,
    service: ConfigService,
    limits: LimitsService,
) -> Sample:
    """The state gauges: backends (serviceable, breaker), outbox backlog, applied config, Redis."""
    backends = []
    for backend in config.backends:
        breaker = health.breaker_state(backend.id)
        usable = health.availability(backend.id, 0).usable and config.state_of(backend.id).state != "disabled"
        backends.append(BackendSample(backend.id, usable, breaker))
    backlog = usage.outbox.backlog()
    return Sample(
        backends=tuple(backends),
        outbox_records=backlog.count,
        outbox_bytes=backlog.stored_bytes,
        outbox_oldest_age_seconds=backlog.oldest_age_seconds,
        config_revision=service.revision or 0,
        config_applied_at=service.applied_at.timestamp() if service.applied_at else 0.0,
        config_rejected=service.rejected,
        limits_store_up=limits.degraded is None,
    )


def _sync(close: Any) -> Any:
    async def run() -> None:
        close()

    return run


def _audit(settings: Settings, redis: _SharedRedis | None, lifecycle: Lifecycle) -> AuditLog:
    retention = settings.audit_retention_seconds
    if redis is not None:
        shared = RedisAuditLog(redis.client, retention, scripts=redis.scripts)
        lifecycle.background(every(300, lambda: shared.sweep(time.time())))
        return shared
    store = LmdbAuditLog(settings.data_dir / "audit", settings.audit_map_size_bytes, retention)
    lifecycle.background(every(60, lambda: store.sweep(time.time())))
    lifecycle.on_stop(_sync(store.close))
    return store


def _limits(
    settings: Settings,
    redis: _SharedRedis | None,
    config: ConfigHolder,
    lifecycle: Lifecycle,
    metrics: Metrics,
) -> LimitsService:
    """Buckets and budget counters in Redis when configured (this process's own store stands in for
    fail_open organisations while Redis is down), else in process."""
    local = MemoryLimitStore()
    lifecycle.background(every(30, _sync(lambda: local.sweep(int(time.time() * 1000)))))
    budget_service: BudgetServiceClient | None = None
    if settings.budget_service_url:
        budget_service = BudgetServiceClient(
            settings.budget_service_url,
            _secret(settings.budget_service_token) or "",
            timeout=settings.budget_service_timeout_seconds,
            negative_ttl=settings.budget_service_negative_ttl_seconds,
            stale_window=settings.budget_service_stale_window_seconds,
        )
        lifecycle.on_stop(budget_service.close)
    return LimitsService(
        config=config.current,
        local=local,
        shared=RedisLimitStore(redis.client, scripts=redis.scripts, redis_clock=True) if redis else None,
        budget_service=budget_service,
        default_max_tokens_cap=settings.limits_default_max_tokens_cap,
        lease_seconds=settings.request_timeout_seconds + settings.limits_lease_margin_seconds,
        stream_lease_seconds=settings.limits_stream_lease_seconds,
        on_denied=lambda denied, period: metrics.observe_denial(denied.limit_state, denied.scope, period),
    )


def _idempotency(settings: Settings, redis: _SharedRedis | None, lifecycle: Lifecycle) -> IdempotencyStore:
    ttl, lease = settings.idempotency_ttl_seconds, settings.idempotency_lease_seconds
    if redis is not None:
        shared = RedisIdempotencyStore(redis.client, ttl, lease, scripts=redis.scripts)
        owners = OwnerRegistry(settings.data_dir / "owners", shared.owner)  # who ran here before us
        lifecycle.on_start(lambda: shared.claim(owners.register()))
        lifecycle.background(shared.keep_alive)
        lifecycle.on_stop(shared.retire)
        lifecycle.on_stop(_sync(owners.unregister))
        return shared
    if settings.idempotency_store == "memory":
        return MemoryIdempotencyStore(settings.idempotency_max_entries, ttl, lease)
    store = LmdbIdempotencyStore(
        settings.data_dir / "idempotency", ttl, lease, settings.idempotency_map_size_bytes
    )
    lifecycle.background(every(60, lambda: store.sweep(time.time())))
    lifecycle.on_stop(_sync(store.close))
    return store


def _demo_overlay(settings: Settings, lifecycle: Lifecycle) -> Callable[[RuntimeConfig], RuntimeConfig]:
    """Demo mode adds its model, upstream and keys to every snapshot: the built-in upstream (on a
    socket bound now, so its URL is known), or ROUTER_DEMO_UPSTREAM."""
    keys = {
        "api_key": settings.demo_api_key.get_secret_value(),
        "admin_key": settings.demo_admin_key.get_secret_value(),
    }
    upstream_url = settings.demo_upstream
    if upstream_url is None:
        sock = socket.create_server(("127.0.0.1", 0))
        upstream_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        upstream: list[Any] = []

        async def start() -> None:
            upstream.append(await start_demo_upstream(sock=sock))

        async def stop() -> None:
            for running in upstream:
                await running.stop()

        lifecycle.on_start(start)
        lifecycle.on_stop(stop)
    url = upstream_url
    model = settings.demo_upstream_model if settings.demo_upstream is not None else None
    return lambda base: demo_config(base, upstream_url=url, upstream_model=model, **keys)


def _health(
    settings: Settings,
    service: ConfigService,
    identity: IdentityServiceKeyStore | None,
    shared_stores: list[HealthCheck],
    usage: UsageParts,
    backends: Callable[[], BackendReadiness],
    config: Callable[[], RuntimeConfig],
) -> HealthService:
    async def process() -> tuple[CheckStatus, str]:
        return "pass", "serving"

    async def backend_check() -> tuple[CheckStatus, str]:
        return backends().check()

    async def credentials() -> tuple[CheckStatus, str]:
        return credentials_check(config(), os.environ)

    def backend_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
        found = backends()
        return found.ready, found.degraded

    checks = [
        HealthCheck("process", process),
        HealthCheck("config", service.readiness),
        *shared_stores,
        HealthCheck("usage_outbox", usage.readiness),
        HealthCheck("backends", backend_check),
        HealthCheck("credentials", credentials),
    ]
    if identity is not None:

        async def identity_service() -> tuple[CheckStatus, str]:
            if identity.degraded:
                return (
                    "warn",
                    f"identity service unreachable; serving cached keys ({identity.stale_served} stale)",
                )
            return "pass", "identity service reachable"

        checks.append(HealthCheck("identity", identity_service))
    return HealthService(
        build=BuildInfo(settings.build_version, settings.build_commit, settings.build_time),
        liveness=[HealthCheck("process", process)],
        readiness=checks,
        backends=backend_lists,
    )


def build_app(components: Components, *, random_hex: Callable[[int], str] = secrets.token_hex) -> ASGIApp:
    """``random_hex`` mints trace and span ids (tests make them deterministic)."""
    settings = components.settings

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await components.lifecycle.start()
        try:
            yield
        finally:
            await components.lifecycle.stop()

    app = AsyncApp(__name__, middlewares=list(_CONNEXION_MIDDLEWARES), lifespan=lifespan)
    resolver = OperationTableResolver(OPERATIONS, components)
    app.add_api(
        SPEC_PATH,
        resolver=resolver,
        security_map=security_map(
            components.authenticator, components.signatures, OPERATIONS, components.tracing
        ),
        pythonic_params=True,
        strict_validation=True,
        validator_map=VALIDATORS,
    )
    for exception, handler in error_handlers(OPERATIONS.values()):
        app.add_error_handler(exception, handler)
    openai_paths = frozenset(op.path for op in OPERATIONS.values() if op.module == "openai")
    inner: ASGIApp = app
    if settings.api_docs:  # behind the fast lane: hot requests never look at it
        inner = ApiDocsMiddleware(inner, pages=lambda: contract_pages(SPEC_PATH, swagger_ui_dir()))
    if settings.fast_lane:
        routes = build_routes(OPERATIONS, resolver.handler_for)
        inner = FastLaneMiddleware(
            inner, routes=routes, authenticator=components.authenticator, tracing=components.tracing
        )
    guarded = BodyGuardMiddleware(
        inner,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        route_caps=dict.fromkeys(openai_paths, settings.openai_max_body_bytes),
    )
    return RequestContextMiddleware(
        PathGuardMiddleware(guarded),
        openai_paths=openai_paths,
        access_log=settings.access_log,
        random_hex=random_hex,
        metrics=components.metrics,
        routes=RouteNames(op.path for op in OPERATIONS.values()),
        tracing=components.tracing,
    )


def create_app() -> ASGIApp:
    """uvicorn factory: every worker builds its own components from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(build_components(settings))
