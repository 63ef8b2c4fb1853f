"""Holds the current runtime-config snapshot; a swap is one reference assignment, atomic for readers."""

from __future__ import annotations

from router_impl.config.model import RuntimeConfig


class ConfigHolder:
    def __init__(self, initial: RuntimeConfig) -> None:
        self._current = initial

    def current(self) -> RuntimeConfig:
        return self._current

    def replace(self, snapshot: RuntimeConfig) -> None:
        self._current = snapshot
