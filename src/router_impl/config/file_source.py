"""Runtime config from a YAML file."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from router_impl.config.model import RuntimeConfig


class ConfigError(Exception):
    pass


def load_file(path: Path | None) -> RuntimeConfig:
    """An absent path means the embedded default: an empty configuration."""
    if path is None:
        return RuntimeConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read runtime config {path}: {exc}") from exc
    try:
        return RuntimeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid runtime config {path}: {exc}") from exc
