"""The embedded transport: outbox entries become lines of rotated JSON Lines files, one file family per topic.

The usage topic writes ``usage-YYYYMMDD-N.jsonl``, the audit topic ``audit-YYYYMMDD-N.jsonl``; any other
topic a file named after it. With ``fsync`` the files are synced before the entries leave the outbox,
so the files are as durable as the outbox was.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from router_impl.usage.outbox_entry import OutboxEntry
from router_impl.usage.sink import JsonlWriter

log = structlog.get_logger("router.usage.jsonl")


class JsonlTransport:
    def __init__(
        self,
        directory: Path,
        prefixes: Mapping[str, str],
        *,
        fsync: bool = True,
        max_file_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.prefixes = dict(prefixes)
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self._writers: dict[str, JsonlWriter] = {}

    async def publish(self, entries: Sequence[OutboxEntry], within_seconds: float) -> set[int]:
        return await asyncio.to_thread(self._write, entries)

    def _write(self, entries: Sequence[OutboxEntry]) -> set[int]:
        written: set[int] = set()
        touched: set[str] = set()
        by_topic: dict[str, list[OutboxEntry]] = {}
        for entry in entries:  # order within a topic is kept
            by_topic.setdefault(entry.topic, []).append(entry)
        try:
            for topic, batch in by_topic.items():
                self._writer(topic).write_lines([e.value for e in batch])
                touched.add(topic)
                written.update(e.seq for e in batch)
        except OSError as exc:
            log.error("usage_file_write_failed", directory=str(self.directory), error=str(exc))
        if self.fsync:
            try:
                for topic in touched:
                    self._writers[topic].sync()
            except OSError as exc:
                log.error("usage_file_sync_failed", directory=str(self.directory), error=str(exc))
                return set()
        return written

    def _writer(self, topic: str) -> JsonlWriter:
        writer = self._writers.get(topic)
        if writer is None:
            prefix = self.prefixes.get(topic) or re.sub(r"[^A-Za-z0-9_-]+", "-", topic)
            writer = JsonlWriter(self.directory, prefix=prefix, max_bytes=self.max_file_bytes)
            self._writers[topic] = writer
        return writer

    async def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
