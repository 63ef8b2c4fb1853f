"""``--config FILE`` together with etcd: the file seeds an empty prefix, matches what the prefix holds,
or the router refuses to start and names the objects that differ (never a silently ignored file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from router_impl.config.layout import decode, explode, parse_key
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import SourceUnavailable


class ConfigSeedRefused(RuntimeError):
    """The file and the etcd prefix disagree: the router does not start."""


class SeedableSource(Protocol):
    async def seed(self, objects: Mapping[str, bytes]) -> bool: ...

    async def objects(self) -> dict[str, bytes]: ...


def differences(wanted: Mapping[str, bytes], held: Mapping[str, bytes]) -> list[str]:
    """Object keys of ``wanted`` that ``held`` lacks or holds with other content (objects only in
    ``held`` -- keys and limits created at run time -- are no difference)."""
    differing = []
    for key, value in wanted.items():
        other = held.get(key)
        if other is None:
            differing.append(f"{key} (not in etcd)")
            continue
        if other == value:
            continue
        kind, object_id = parse_key(key)
        try:
            same = decode(kind, object_id, other) == decode(kind, object_id, value)
        except ValueError:
            same = False
        if not same:
            differing.append(f"{key} (changed in etcd)")
    return differing


async def seed_from_file(
    source: SeedableSource, config: RuntimeConfig, path: Path, prefix: str, *, log: Any = None
) -> None:
    """Raises ConfigSeedRefused; an unreachable etcd is logged and left to the config service (which
    then serves the last known good config or refuses to start)."""
    log = log if log is not None else structlog.get_logger("router.config")
    wanted = explode(config)
    try:
        if await source.seed(wanted):
            log.info("config_file_seeded_etcd", path=str(path), prefix=prefix, objects=len(wanted))
            return
        held = await source.objects()
    except SourceUnavailable as exc:
        log.warning("config_file_not_checked", path=str(path), prefix=prefix, reason=str(exc))
        return
    differing = differences(wanted, held)
    if differing:
        listed = ", ".join(differing[:20]) + (
            f" and {len(differing) - 20} more" if len(differing) > 20 else ""
        )
        raise ConfigSeedRefused(
            f"--config {path} differs from the config in etcd (prefix {prefix}): {listed}. The file only "
            "seeds an empty prefix; etcd is the source of truth after that. Start without --config, or "
            "write the file to etcd with `router config apply FILE`."
        )
    log.info("config_file_matches_etcd", path=str(path), prefix=prefix, objects=len(wanted))
