"""Wiring of the runtime config: its source (etcd or a file), the holder and the config service,
the seeding of an empty etcd from a file, and demo mode's overlay."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router_impl.config.etcd_source import EtcdSource
from router_impl.config.file_source import FileSource, load_file
from router_impl.config.holder import ConfigHolder
from router_impl.config.lkg_cache import LastKnownGood
from router_impl.config.model import RuntimeConfig
from router_impl.config.seed import seed_from_file
from router_impl.config.service import ConfigService
from router_impl.config.source import ConfigSource
from router_impl.demo.config import demo_config
from router_impl.demo.upstream import start_demo_upstream
from router_impl.lifecycle import Lifecycle
from router_impl.settings import Settings


@dataclass(frozen=True)
class ConfigParts:
    holder: ConfigHolder  # what every reader sees: the applied snapshot
    service: ConfigService  # follows the source, applies, writes


def build_config(
    settings: Settings, lifecycle: Lifecycle, on_apply: Callable[[RuntimeConfig], Awaitable[None]]
) -> ConfigParts:
    """The config service starts (and first applies) with ``lifecycle``; ``on_apply`` follows each
    snapshot it applies."""
    holder = ConfigHolder(RuntimeConfig())  # filled by the config service before serving starts
    source = _config_source(settings)
    service = ConfigService(
        source,
        holder,
        LastKnownGood(settings.data_dir / "config-lkg"),
        clock=lambda: datetime.now(UTC),
        on_apply=[on_apply],
        overlay=_demo_overlay(settings, lifecycle) if settings.demo else None,
    )
    if isinstance(source, EtcdSource) and settings.config_path is not None:
        seed_path = settings.config_path
        seeding = load_file(seed_path)  # an unreadable or invalid file stops the start here
        lifecycle.on_start(lambda: seed_from_file(source, seeding, seed_path, settings.etcd_prefix))
    lifecycle.on_start(lambda: service.start(within=settings.config_start_timeout_seconds))
    lifecycle.on_stop(service.stop)
    return ConfigParts(holder, service)


def _config_source(settings: Settings) -> ConfigSource:
    if settings.etcd_endpoints:
        endpoints = [e.strip() for e in settings.etcd_endpoints.split(",") if e.strip()]
        return EtcdSource(endpoints, settings.etcd_prefix, settings.etcd_timeout_seconds)
    path = settings.config_path or settings.data_dir / "runtime-config.yaml"
    return FileSource(path, settings.config_poll_seconds, missing_ok=settings.config_path is None)


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
