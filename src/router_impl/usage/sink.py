"""Where usage records go: the pipeline emits each record into the durable outbox (``OutboxUsageSink``);
the publisher delivers it to Kafka or, embedded, to rotated JSON Lines files (``JsonlWriter``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from router_contract.models import UsageRecord

from router_impl.usage.outbox import LmdbOutbox, OutboxError


class UsageNotStored(Exception):
    """The sink could not commit the record: the request must not be billed without it."""


class UsageSink(Protocol):
    async def emit(self, record: UsageRecord) -> None:
        """Returns once the record is durable; ``UsageNotStored`` when it is not."""
        ...


class JsonlWriter:
    """Appends one JSON object per line to ``{prefix}-YYYYMMDD-N.jsonl``; rotates by day and by size."""

    def __init__(
        self,
        directory: Path,
        *,
        prefix: str = "usage",
        max_bytes: int = 64 * 1024 * 1024,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.now = now
        self._file: IO[bytes] | None = None
        self._day = ""
        self._size = 0
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def write(self, line: bytes) -> None:
        self.write_lines([line])

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append lines in order: one write and one flush per file part (not per line)."""
        day = self.now().strftime("%Y%m%d")
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            needed = len(line) + 1
            if self._file is None or day != self._day or self._size + size + needed > self.max_bytes:
                self._put(chunk, size)
                chunk, size = [], 0
                self._open(day)
            chunk.append(line)
            size += needed
        self._put(chunk, size)

    def _put(self, chunk: list[bytes], size: int) -> None:
        if not chunk or self._file is None:
            return
        self._file.write(b"\n".join(chunk) + b"\n")
        self._file.flush()  # visible to readers (router usage tail) at once
        self._size += size

    def sync(self) -> None:
        """fsync the open file, so lines written survive a machine crash once their outbox entry is gone."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def _open(self, day: str) -> None:
        self.close()
        part = 0
        while True:
            path = self.directory / f"{self.prefix}-{day}-{part}.jsonl"
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


class OutboxUsageSink:
    """Each record is committed to the outbox before ``emit`` returns, keyed by its organisation."""

    def __init__(self, outbox: LmdbOutbox, topic: str) -> None:
        self.outbox = outbox
        self.topic = topic

    async def emit(self, record: UsageRecord) -> None:
        value = record.model_dump_json(exclude_none=True).encode()
        try:
            await self.outbox.append(self.topic, record.organization_id.encode(), value)
        except OutboxError as exc:
            raise UsageNotStored(str(exc)) from exc
