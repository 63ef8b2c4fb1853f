"""The components one router process is built from; handlers receive them, never globals."""

from __future__ import annotations

from dataclasses import dataclass

from router_impl.auth.authenticator import Authenticator
from router_impl.config.model import RuntimeConfig
from router_impl.health import HealthService
from router_impl.settings import Settings


@dataclass(frozen=True)
class Components:
    settings: Settings
    runtime_config: RuntimeConfig
    authenticator: Authenticator
    health: HealthService
