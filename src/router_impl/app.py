"""Composition root: Settings -> components -> Connexion AsyncApp wrapped in our ASGI middleware."""

from __future__ import annotations

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

from router_impl.auth.authenticator import Authenticator
from router_impl.auth.keys import InMemoryKeyStore
from router_impl.components import Components
from router_impl.config.file_source import load_file
from router_impl.config.model import RuntimeConfig
from router_impl.health import BuildInfo, CheckStatus, HealthCheck, HealthService
from router_impl.settings import Settings
from router_impl.telemetry.logging import configure_logging
from router_impl.web.errors import error_handlers
from router_impl.web.middleware.body_guard import BodyGuardMiddleware
from router_impl.web.middleware.request_context import RequestContextMiddleware
from router_impl.web.resolver import OperationTableResolver
from router_impl.web.security import security_map

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


def build_components(settings: Settings) -> Components:
    runtime_config = load_file(settings.config_path)
    return Components(
        settings=settings,
        runtime_config=runtime_config,
        authenticator=Authenticator(InMemoryKeyStore(runtime_config.api_keys)),
        health=_health(settings, runtime_config),
    )


def _health(settings: Settings, runtime_config: RuntimeConfig) -> HealthService:
    async def process() -> tuple[CheckStatus, str]:
        return "pass", "serving"

    async def config() -> tuple[CheckStatus, str]:
        return "pass", f"runtime config loaded ({len(runtime_config.api_keys)} api keys)"

    return HealthService(
        build=BuildInfo(settings.build_version, settings.build_commit, settings.build_time),
        liveness=[HealthCheck("process", process)],
        readiness=[HealthCheck("process", process), HealthCheck("config", config)],
    )


def build_app(components: Components) -> ASGIApp:
    settings = components.settings
    app = AsyncApp(__name__, middlewares=list(_CONNEXION_MIDDLEWARES))
    app.add_api(
        SPEC_PATH,
        resolver=OperationTableResolver(OPERATIONS, components),
        security_map=security_map(components.authenticator, OPERATIONS),
        pythonic_params=True,
        strict_validation=True,
    )
    for exception, handler in error_handlers(OPERATIONS.values()):
        app.add_error_handler(exception, handler)
    openai_paths = frozenset(op.path for op in OPERATIONS.values() if op.module == "openai")
    guarded = BodyGuardMiddleware(app, max_body_bytes=settings.max_body_bytes)
    return RequestContextMiddleware(guarded, openai_paths=openai_paths, access_log=settings.access_log)


def create_app() -> ASGIApp:
    """uvicorn factory: every worker builds its own components from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(build_components(settings))
