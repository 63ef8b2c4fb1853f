"""The runtime-config port: where complete, validated snapshots come from and where admin writes go."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel

from router_impl.config.model import RuntimeConfig

# One kind per object family; an object's key is ``<kind>/<id>`` under the source's prefix.
ObjectKind = Literal["backends", "models", "backend_states", "keys", "limits"]
KINDS: tuple[ObjectKind, ...] = ("backends", "models", "backend_states", "keys", "limits")


@dataclass(frozen=True)
class Versioned:
    """A complete, validated snapshot and the source revision it reflects (etcd's revision, or a
    per-process counter for a file)."""

    config: RuntimeConfig
    revision: int


class ConfigInvalid(ValueError):
    """A snapshot (or a proposed change) that fails validation; ``problems`` maps object key -> reason."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        listed = "; ".join(f"{key}: {reason}" for key, reason in sorted(self.problems.items()))
        super().__init__(f"invalid runtime config: {listed}")


class ConfigConflict(RuntimeError):
    """A write kept losing races with concurrent writers; the caller may retry (HTTP 409)."""


class ObjectNotFound(LookupError):
    """A delete named an object the source does not hold (HTTP 404)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no config object {key}")


class SourceUnavailable(RuntimeError):
    """The source cannot be read or written right now (HTTP 503; at start-up: serve the cache)."""


class ConfigSource(Protocol):
    """Where runtime config lives. ``name`` ("etcd", "file") appears in readiness and logs."""

    name: str
    # Changes the source saw but refused as invalid since it was created (a metric).
    rejected: int

    @property
    def problem(self) -> str | None:
        """Why the source is not following right now (no hosts or secrets); None when it is."""
        ...

    async def snapshot(self) -> Versioned:
        """Read the source now; raises SourceUnavailable or ConfigInvalid."""
        ...

    def changes(self) -> AsyncIterator[Versioned]:
        """Every later snapshot, each complete and valid; intermediate ones may be coalesced."""
        ...

    async def put(self, kind: ObjectKind, object_id: str, obj: BaseModel) -> int:
        """Validate the would-be snapshot, then write one object; returns the write's revision."""
        ...

    async def delete(self, kind: ObjectKind, object_id: str) -> int:
        """Validate the would-be snapshot, then remove one object; returns the write's revision."""
        ...

    async def close(self) -> None: ...
