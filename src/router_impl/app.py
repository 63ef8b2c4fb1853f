"""Composition root: Settings -> components -> Connexion AsyncApp wrapped in our ASGI middleware.

Each port gets its embedded adapter unless its shared service is configured
(``ROUTER_REDIS_URL``, ``ROUTER_IDENTITY_URL``; etcd and Kafka follow in their issues).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from connexion import AsyncApp
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from router_contract import SPEC_PATH
from router_contract.operations import OPERATIONS
from starlette.types import ASGIApp

from router_impl.components import Components
from router_impl.config.model import RuntimeConfig
from router_impl.data_dir import private_data_dir
from router_impl.demo.config import demo_bind_refusal
from router_impl.lifecycle import Lifecycle, every, sync
from router_impl.pipeline import Pipeline
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.decisions import DecisionLog
from router_impl.routing.dispatcher import Dispatcher
from router_impl.routing.engine import RoutingEngine
from router_impl.routing.health import BackendHealth
from router_impl.routing.prober import Prober
from router_impl.routing.readiness import assess
from router_impl.settings import Settings
from router_impl.shared_readiness import shared_store_checks
from router_impl.telemetry.logging import configure_logging
from router_impl.telemetry.metrics import Metrics, RouteNames
from router_impl.telemetry.tracing import Tracing
from router_impl.usage.auditing import Auditing
from router_impl.usage.wiring import build_usage
from router_impl.web.errors import error_handlers
from router_impl.web.middleware.api_docs import (
    ApiDocsMiddleware,
    contract_pages,
    read_contract,
    swagger_ui_dir,
)
from router_impl.web.middleware.body_guard import BodyGuardMiddleware
from router_impl.web.middleware.fast_lane import FastLaneMiddleware, build_routes
from router_impl.web.middleware.path_guard import PathGuardMiddleware
from router_impl.web.middleware.request_context import RequestContextMiddleware
from router_impl.web.probe_guard import ProbeGuard
from router_impl.web.resolver import OperationTableResolver
from router_impl.web.security import security_map
from router_impl.web.validators import VALIDATORS
from router_impl.wiring.admin_services import build_admin
from router_impl.wiring.audit import build_audit
from router_impl.wiring.auth import build_auth
from router_impl.wiring.checks import build_health, state_sample
from router_impl.wiring.config import build_config
from router_impl.wiring.limits import build_idempotency, build_limits
from router_impl.wiring.shared_redis import shared_redis

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


def build_components(settings: Settings, *, tracing: Tracing | None = None) -> Components:
    """Every part of one router process, in dependency order; ``tracing`` replaces the one the
    settings describe (tests pass an in-memory exporter)."""
    private_data_dir(settings.data_dir)
    if (refusal := demo_bind_refusal(settings)) is not None:  # also for launchers other than the CLI
        raise RuntimeError(refusal)
    lifecycle = Lifecycle()
    tracing = tracing or Tracing.from_settings(settings)
    lifecycle.on_stop(tracing.shutdown)  # registered first, so it runs last: after the outbox drain
    redis = shared_redis(settings, lifecycle)
    metrics = Metrics(version=settings.build_version, commit=settings.build_commit)

    # Backends: the client, their health (breakers) and the prober that re-admits them.
    backends = BackendClient()
    lifecycle.on_stop(backends.close)
    health = BackendHealth(
        time.monotonic,
        cool_down_s=settings.breaker_cool_down_seconds,
        on_open=lambda backend_id: metrics.breaker_opened.labels(backend=backend_id).inc(),
    )

    async def follow_snapshot(snapshot: RuntimeConfig) -> None:
        await backends.update(snapshot.backends)
        health.forget_except(b.id for b in snapshot.backends)

    config = build_config(settings, lifecycle, on_apply=follow_snapshot)
    prober = Prober(health)
    lifecycle.background(lambda: prober.run(config.holder.current))

    auth = build_auth(settings, lifecycle, config, redis)
    usage = build_usage(settings, lifecycle, on_round=metrics.observe_published, tracer=tracing)
    audit = build_audit(settings, lifecycle, redis, usage)
    limits = build_limits(
        settings,
        lifecycle,
        redis,
        config.holder.current,
        on_denied=lambda denied, period: metrics.observe_denial(denied.limit_state, denied.scope, period),
    )
    auditing = Auditing(audit)
    decisions = DecisionLog()
    pipeline = Pipeline(
        config=config.holder.current,
        authenticator=auth.authenticator,
        backends=backends,
        engine=RoutingEngine(health, random.Random()),  # noqa: S311 -- load spreading, not secrecy
        dispatcher=Dispatcher(backends, health, observe=metrics.observe_backend, tracer=tracing),
        decisions=decisions,
        idempotency=build_idempotency(settings, lifecycle, redis),
        usage=usage.sink,
        request_timeout_seconds=settings.request_timeout_seconds,
        limits=limits,
        auditing=auditing,
        accepting=lambda: usage.outbox.accepting,
        on_routed=lambda model, decision: metrics.observe_decision(model, decision, decision == "FAILOVER"),
        tracer=tracing,
    )
    admin = build_admin(
        config=config,
        limits=limits,
        key_store=auth.key_store,
        health=health,
        backends=backends,
        record_audit=auditing.record,
        now=lambda: datetime.now(UTC),
    )

    metrics.sample_from(lambda: state_sample(config.holder.current(), health, usage, config.service, limits))
    lifecycle.background(every(5, sync(metrics.refresh)))
    return Components(
        settings=settings,
        config=config.holder,
        authenticator=auth.authenticator,
        signatures=auth.signatures,
        key_admin=admin.keys,
        config_admin=admin.config,
        limits_admin=admin.limits,
        identity=auth.identity,
        health=build_health(
            settings,
            config.service,
            auth.identity,
            shared_store_checks(
                ping=redis.ping if redis is not None else None,
                limits=limits.readiness,
                idempotency_store=settings.idempotency_store,
            ),
            usage,
            lambda: assess(config.holder.current(), health),
            config.holder.current,
            auth.key_store,
        ),
        pipeline=pipeline,
        config_service=config.service,
        health_registry=health,
        backend_client=backends,
        decisions=decisions,
        lifecycle=lifecycle,
        started_at=int(time.time()),
        metrics=metrics,
        probe_guard=ProbeGuard(),
        limits=limits,
        audit=audit,
        auditing=auditing,
        tracing=tracing,
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
        read_contract(SPEC_PATH),
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
        routes = build_routes(OPERATIONS, resolver.bound)
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
