"""Runtime config from a YAML file: loaded once (``load_file``) or followed (``FileSource``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import BaseModel, ValidationError

from router_impl.config.feed import SnapshotFeed
from router_impl.config.layout import assemble, encode, explode, object_key, summary, with_change
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigInvalid, ObjectKind, ObjectNotFound, SourceUnavailable, Versioned

# libyaml's loader and dumper: an admin write re-reads and rewrites the file, and PyYAML's pure-Python
# ones made that cost grow with the config (~2.5x the CPU, measured under contract fuzzing).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _load(text: str | bytes) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader (libyaml's, when present)


class ConfigError(Exception):
    pass


def load_file(path: Path | None) -> RuntimeConfig:
    """An absent path means the embedded default: an empty configuration."""
    if path is None:
        return RuntimeConfig()
    try:
        raw = _load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read runtime config {path}: {exc}") from exc
    try:
        return RuntimeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid runtime config {path}: {exc}") from exc


# ---------------------------------------------------------------------- hot-reloaded file source

Stamp = tuple[int, int, int, int, int]  # device, inode, size, mtime ns, ctime ns
_HEADER = "# Runtime config. Rewritten by the router's admin API (comments are not kept).\n"


class FileSource:
    """The embedded default: a YAML file polled for changes (no inotify: it misses ConfigMap symlink
    swaps and network filesystems). An invalid or vanished file keeps the last good snapshot.
    ``missing_ok`` starts from an empty config when the file does not exist yet (admin writes create it).
    """

    name = "file"

    def __init__(
        self, path: Path, poll_interval: float = 1.0, *, missing_ok: bool = False, log: Any = None
    ) -> None:
        self.path = path
        self._poll_interval = poll_interval
        self._missing_ok = missing_ok
        self._log = log if log is not None else structlog.get_logger("router.config.file")
        self._lock = asyncio.Lock()
        self._feed = SnapshotFeed()
        self._poller: asyncio.Task[None] | None = None
        self._seen: tuple[Stamp | None, str] | None = None  # the content last looked at, good or not
        self._revision = 0
        self._problem: str | None = None
        self.rejected = 0

    @property
    def problem(self) -> str | None:
        return self._problem

    async def snapshot(self) -> Versioned:
        async with self._lock:
            stamp, data = await asyncio.to_thread(self._read)
            self._seen = (stamp, _digest(data))
            return self._versioned(self._parse(data, missing_ok=self._missing_ok))

    def changes(self) -> AsyncIterator[Versioned]:
        """Snapshots published from this call on (the first call starts polling)."""
        since = self._feed.position
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="file-config-poller")
        return self._feed.follow(since)

    async def put(self, kind: ObjectKind, object_id: str, obj: BaseModel) -> int:
        return await self._write(kind, object_id, encode(kind, object_id, obj))

    async def delete(self, kind: ObjectKind, object_id: str) -> int:
        return await self._write(kind, object_id, None)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                async with self._lock:
                    await self._check()
            except Exception:
                self._log.exception("config_poll_failed", source="file", path=str(self.path))

    async def _check(self) -> None:
        if self._seen is not None and _stat(self.path) == self._seen[0]:
            return
        stamp, data = await asyncio.to_thread(self._read)
        digest = _digest(data)
        unchanged = self._seen is not None and digest == self._seen[1]
        self._seen = (stamp, digest)
        if unchanged:
            return
        try:
            config = self._parse(data, missing_ok=False)  # a vanished file is a mistake, not "empty"
        except (ConfigInvalid, SourceUnavailable) as exc:
            self.rejected += 1
            self._problem = f"config file {self.path.name} rejected; serving revision {self._revision}"
            self._log.warning(
                "config_rejected", source="file", path=str(self.path), reason=str(exc), serving=self._revision
            )
            return
        self._problem = None
        self._feed.publish(self._versioned(config))

    async def _write(self, kind: ObjectKind, object_id: str, value: bytes | None) -> int:
        """Apply one object change to the file as it is now (an invalid file must be fixed first)."""
        async with self._lock:
            _, data = await asyncio.to_thread(self._read)
            objects = explode(self._parse(data, missing_ok=self._missing_ok))
            key = object_key(kind, object_id)
            if value is None and key not in objects:
                raise ObjectNotFound(key)
            config = assemble(with_change(objects, kind, object_id, value))
            text = render(config).encode()
            stamp = await asyncio.to_thread(_replace_atomically, self.path, text)
            self._seen = (stamp, _digest(text))
            self._problem = None
            snapshot = self._versioned(config)
            self._feed.publish(snapshot)
            self._log.info(
                "config_object_written", key=key, revision=snapshot.revision, deleted=value is None
            )
            return snapshot.revision

    def _versioned(self, config: RuntimeConfig) -> Versioned:
        self._revision += 1
        return Versioned(config, self._revision)

    def _read(self) -> tuple[Stamp | None, bytes | None]:
        try:
            with self.path.open("rb") as file:
                return _stamp(os.fstat(file.fileno())), file.read()
        except FileNotFoundError:
            return None, None

    def _parse(self, data: bytes | None, *, missing_ok: bool) -> RuntimeConfig:
        if data is None:
            if missing_ok:
                return RuntimeConfig()
            raise SourceUnavailable(f"config file {self.path.name} does not exist")
        try:
            raw = _load(data) or {}
        except yaml.YAMLError as exc:
            raise ConfigInvalid({self.path.name: f"not YAML: {exc}"}) from None
        if not isinstance(raw, dict):
            raise ConfigInvalid({self.path.name: "not a mapping of backends, models, api_keys, ..."})
        try:
            return RuntimeConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigInvalid({self.path.name: summary(exc)}) from None


def render(config: RuntimeConfig) -> str:
    """The YAML a file source holds: defaults left out, so it reads like a hand-written file."""
    document = config.model_dump(mode="json", exclude_defaults=True)
    return _HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _replace_atomically(path: Path, data: bytes) -> Stamp:
    """Readers see the old file or the new one, never a torn write; the mode is kept. A file the
    router creates is private (0600): it holds key hashes and sealed signing secrets."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return _stamp(path.stat())


def _stat(path: Path) -> Stamp | None:
    try:
        return _stamp(path.stat())
    except FileNotFoundError:
        return None


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest(data: bytes | None) -> str:
    return "missing" if data is None else hashlib.sha256(data).hexdigest()
