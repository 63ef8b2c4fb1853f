"""The last-known-good runtime config on local disk (LMDB), so a router can start while its source is
down. One record, replaced in one write transaction per applied snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from router_impl.config.layout import summary
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import Versioned

DEFAULT_MAP_SIZE = 256 * 1024 * 1024
_RECORD_KEY = b"last_known_good"
_FORMAT = 1


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = _FORMAT
    source: str
    revision: int
    saved_at: datetime
    config: RuntimeConfig


@dataclass(frozen=True)
class CachedSnapshot:
    snapshot: Versioned
    source: str  # the source it came from ("etcd", "file")
    saved_at: datetime


class LastKnownGood:
    """Open once per process (LMDB refuses a second environment on the same path in one process)."""

    def __init__(self, path: Path, map_size: int = DEFAULT_MAP_SIZE, *, log: Any = None) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=0, subdir=True, mode=0o600)
        self._log = log if log is not None else structlog.get_logger("router.config.cache")

    def save(self, snapshot: Versioned, source: str, saved_at: datetime) -> None:
        record = _Record(source=source, revision=snapshot.revision, saved_at=saved_at, config=snapshot.config)
        with self._env.begin(write=True) as txn:
            txn.put(_RECORD_KEY, record.model_dump_json().encode())

    def load(self) -> CachedSnapshot | None:
        """None when nothing was saved, or when the record no longer validates (say, after an upgrade)."""
        with self._env.begin() as txn:
            raw = txn.get(_RECORD_KEY)
        if raw is None:
            return None
        try:
            record = _Record.model_validate_json(bytes(raw))
        except ValidationError as exc:
            self._log.warning("config_cache_unreadable", reason=summary(exc))
            return None
        return CachedSnapshot(Versioned(record.config, record.revision), record.source, record.saved_at)

    def close(self) -> None:
        self._env.close()
