"""The embedded default: the outbox drains to rotated JSON Lines files, usage and audit apart."""

from __future__ import annotations

import json
from pathlib import Path

from router_impl.cli.usage import jsonl_files
from router_impl.lifecycle import Lifecycle
from router_impl.settings import Settings
from router_impl.usage.jsonl import JsonlTransport
from router_impl.usage.outbox import LmdbOutbox, read_backlog
from router_impl.usage.publisher import Publisher
from router_impl.usage.sink import OutboxUsageSink
from router_impl.usage.wiring import build_usage
from tests.harness.wait import eventually
from tests.usage.outbox_support import usage_record

USAGE, AUDIT = "usage.records.v1", "audit.events.v1"
PREFIXES = {USAGE: "usage", AUDIT: "audit"}


def lines(directory: Path, prefix: str) -> list[dict[str, object]]:
    return [
        json.loads(line) for path in jsonl_files(directory, prefix) for line in path.read_text().splitlines()
    ]


def file_publisher(outbox: LmdbOutbox, directory: Path, **transport: object) -> Publisher:
    return Publisher(
        outbox,
        JsonlTransport(directory, PREFIXES, **transport),  # type: ignore[arg-type]
        backoff_initial=0.01,
        backoff_max=0.05,
        idle_seconds=0.05,
    )


async def test_usage_and_audit_entries_land_in_their_own_files_in_order(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 22)
    sink = OutboxUsageSink(outbox, USAGE)
    records = [usage_record(f"org-{n % 3}", n) for n in range(120)]
    for n, record in enumerate(records):
        await sink.emit(record)
        if n % 10 == 0:
            await outbox.append(AUDIT, b"org-0", json.dumps({"event": n}).encode())
    # Small files: the records rotate over several, and are read back in order across them.
    publisher = file_publisher(outbox, tmp_path / "usage", max_file_bytes=8_000)
    await publisher.start()
    await eventually(lambda: outbox.backlog().count == 0, 5, what="the outbox to drain")
    await publisher.close()
    await outbox.close()

    assert len(jsonl_files(tmp_path / "usage", "usage")) > 3
    written = lines(tmp_path / "usage", "usage")
    assert [r["record_id"] for r in written] == [str(r.record_id) for r in records]
    assert [e["event"] for e in lines(tmp_path / "usage", "audit")] == list(range(0, 120, 10))


async def test_entries_a_stopped_router_left_behind_are_written_by_the_next_start(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    for n in range(5):
        await outbox.append(USAGE, b"org", json.dumps({"n": n}).encode())
    await outbox.close()  # stopped before any publishing

    reopened = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    publisher = file_publisher(reopened, tmp_path / "usage")
    assert await publisher.drain(5) == 0
    await publisher.close()
    await reopened.close()
    assert [r["n"] for r in lines(tmp_path / "usage", "usage")] == [0, 1, 2, 3, 4]


async def test_entries_stay_in_the_outbox_while_the_files_cannot_be_written(tmp_path: Path) -> None:
    directory = tmp_path / "usage"
    directory.write_text("a file where the directory should be")
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    publisher = file_publisher(outbox, directory)
    await publisher.start()
    for n in range(3):
        await outbox.append(USAGE, b"org", json.dumps({"n": n}).encode())
    await eventually(lambda: publisher.failing, 5, what="the write failure")
    assert outbox.backlog().count == 3

    directory.unlink()
    await eventually(lambda: outbox.backlog().count == 0, 5, what="the retry to succeed")
    await publisher.close()
    await outbox.close()
    assert [r["n"] for r in lines(directory, "usage")] == [0, 1, 2]


async def test_a_router_without_kafka_writes_files_and_drains_them_on_shutdown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, outbox_max_bytes=1 << 20)
    lifecycle = Lifecycle()
    usage = build_usage(settings, lifecycle)
    await lifecycle.start()
    assert await usage.readiness() == ("pass", "usage backlog 0 records, 0 bytes, oldest 0.0 s")
    records = [usage_record("org-1", n) for n in range(50)]
    for record in records:
        await usage.sink.emit(record)
    await lifecycle.stop()  # drains, then closes the outbox

    assert read_backlog(tmp_path / "outbox").count == 0
    written = lines(tmp_path / "usage", "usage")
    assert [r["record_id"] for r in written] == [str(r.record_id) for r in records]


async def test_readiness_fails_while_the_outbox_is_full_and_warns_when_it_is_filling(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, outbox_max_bytes=1 << 20, outbox_sync=False)
    usage = build_usage(settings, Lifecycle())  # never started: nothing drains
    value = b"x" * 4000
    while usage.outbox.backlog().stored_bytes < (1 << 20) * 0.5:
        await usage.outbox.append(USAGE, b"org", value)
    status, details = await usage.readiness()
    assert status == "warn"
    while usage.outbox.accepting:
        await usage.outbox.append(USAGE, b"org", value)
    status, details = await usage.readiness()
    assert status == "fail"
    assert "outbox full" in details
    await usage.outbox.close()
