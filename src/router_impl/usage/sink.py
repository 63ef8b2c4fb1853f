"""Where usage records go. The embedded sink appends JSON Lines to rotated files in the data dir.

(The durable LMDB outbox and the Kafka publisher arrive with the usage issue; they sit in front of
the same writer.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from router_contract.models import UsageRecord


class UsageSink(Protocol):
    async def emit(self, record: UsageRecord) -> None: ...


class JsonlWriter:
    """Appends one JSON object per line to ``usage-YYYYMMDD-N.jsonl``; rotates by day and by size."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.now = now
        self._file: IO[bytes] | None = None
        self._day = ""
        self._size = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, line: bytes) -> None:
        day = self.now().strftime("%Y%m%d")
        if self._file is None or day != self._day or self._size + len(line) + 1 > self.max_bytes:
            self._open(day)
        assert self._file is not None
        self._file.write(line + b"\n")
        self._file.flush()  # visible to readers at once; fsync is the outbox's job
        self._size += len(line) + 1

    def _open(self, day: str) -> None:
        self.close()
        part = 0
        while True:
            path = self.directory / f"usage-{day}-{part}.jsonl"
            size = path.stat().st_size if path.exists() else 0
            if size < self.max_bytes:
                break
            part += 1
        self._file = open(path, "ab")  # noqa: SIM115 -- kept open across writes, closed on rotation
        os.chmod(path, 0o600)
        self._day, self._size = day, size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class JsonlUsageSink:
    def __init__(self, writer: JsonlWriter) -> None:
        self.writer = writer

    async def emit(self, record: UsageRecord) -> None:
        self.writer.write(record.model_dump_json(exclude_none=True).encode())
