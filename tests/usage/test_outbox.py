"""The LMDB outbox: committed before append returns, in append order, group-committed, capped, durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router_impl.settings import Settings
from router_impl.usage.outbox import LmdbOutbox, OutboxError, OutboxFull, read_backlog
from tests.harness.clock import ManualClock

TOPIC = "usage.records.v1"
T0 = 1_800_000_000.0


def entry_size(topic: str, key: bytes, value: bytes) -> int:
    return 14 + len(topic) + len(key) + len(value) + 8  # header + topic + key + value + sequence key


async def test_entries_come_back_in_append_order_with_topic_key_value_and_time(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20, clock=clock)
    for n in range(5):
        await outbox.append(TOPIC if n % 2 else "audit.events.v1", f"org-{n % 2}".encode(), b"v%d" % n)
        clock.advance(1)
    entries = await outbox.read(10)
    assert [e.value for e in entries] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert [e.topic for e in entries[:2]] == ["audit.events.v1", TOPIC]
    assert [e.key for e in entries[:2]] == [b"org-0", b"org-1"]
    assert [e.appended_at for e in entries] == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert [e.value for e in await outbox.read(2)] == [b"v0", b"v1"]

    await outbox.delete([entries[0].seq, entries[2].seq])
    assert [e.value for e in await outbox.read(10)] == [b"v1", b"v3", b"v4"]
    await outbox.delete([entries[0].seq])  # already gone: ignored
    await outbox.close()


async def test_concurrent_appends_share_write_transactions(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 24)
    await asyncio.gather(*(outbox.append(TOPIC, b"org", b"x" * 600) for _ in range(500)))
    assert outbox.backlog().count == 500
    # The first append commits alone; the rest queue behind it and commit together.
    assert outbox.commits <= 5, outbox.commits
    await outbox.close()


async def test_sequential_appends_each_commit_before_returning(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    for n in range(3):
        await outbox.append(TOPIC, b"org", b"v")
        assert outbox.commits == n + 1
        assert outbox.backlog().count == n + 1
    await outbox.close()


async def test_entries_survive_close_and_reopen_and_sequence_numbers_are_never_reused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox"
    outbox = LmdbOutbox(path, max_bytes=1 << 20)
    for n in range(3):
        await outbox.append(TOPIC, b"org", b"v%d" % n)
    first = await outbox.read(10)
    await outbox.delete([e.seq for e in first])
    await outbox.append(TOPIC, b"org", b"v3")
    await outbox.close()

    reopened = LmdbOutbox(path, max_bytes=1 << 20)
    kept = await reopened.read(10)
    assert [e.value for e in kept] == [b"v3"]
    await reopened.delete([kept[0].seq])
    await reopened.append(TOPIC, b"org", b"v4")
    (latest,) = await reopened.read(10)
    assert latest.seq > kept[0].seq > max(e.seq for e in first)
    assert reopened.backlog().stored_bytes == entry_size(TOPIC, b"org", b"v4")
    await reopened.close()


async def test_past_the_cap_the_outbox_stops_accepting_until_it_drains_below_the_low_watermark(
    tmp_path: Path,
) -> None:
    value = b"x" * 78
    size = entry_size(TOPIC, b"org", value)  # 119 bytes
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=size * 10, reserve_bytes=size * 2)
    for _ in range(9):
        await outbox.append(TOPIC, b"org", value)
    assert outbox.accepting
    await outbox.append(TOPIC, b"org", value)  # reaches the cap
    assert not outbox.accepting
    assert outbox.status() == "full"

    # Requests admitted before the gate closed still get their records, up to the reserve...
    await outbox.append(TOPIC, b"org", value)
    await outbox.append(TOPIC, b"org", value)
    # ...and nothing is stored past it: the caller is told.
    with pytest.raises(OutboxFull):
        await outbox.append(TOPIC, b"org", value)
    assert outbox.backlog().count == 12

    entries = await outbox.read(100)
    await outbox.delete([e.seq for e in entries[:2]])  # 10 left: at the cap
    assert not outbox.accepting
    await outbox.delete([entries[2].seq])  # 9 left: 90 %, the low watermark
    assert outbox.accepting
    await outbox.append(TOPIC, b"org", value)
    await outbox.close()


async def test_a_reopened_outbox_over_its_cap_starts_refusing(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    outbox = LmdbOutbox(path, max_bytes=1 << 20)
    for _ in range(10):
        await outbox.append(TOPIC, b"org", b"x" * 100)
    await outbox.close()
    smaller = LmdbOutbox(path, max_bytes=500)
    assert not smaller.accepting
    await smaller.close()


async def test_backlog_reports_count_bytes_and_the_oldest_entrys_age(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=10_000, warn_age_seconds=60, clock=clock)
    empty = outbox.backlog()
    assert (empty.count, empty.stored_bytes, empty.oldest_age_seconds) == (0, 0, 0.0)
    await outbox.append(TOPIC, b"org", b"first")
    clock.advance(30)
    await outbox.append(TOPIC, b"org", b"second")
    clock.advance(15)
    backlog = outbox.backlog()
    assert backlog.count == 2
    assert backlog.stored_bytes == entry_size(TOPIC, b"org", b"first") + entry_size(TOPIC, b"org", b"second")
    assert backlog.oldest_age_seconds == pytest.approx(45)
    assert outbox.status() == "ok"
    clock.advance(16)
    assert outbox.status() == "warn"  # oldest older than warn_age_seconds

    (oldest, _) = await outbox.read(10)
    await outbox.delete([oldest.seq])
    assert outbox.backlog().oldest_age_seconds == pytest.approx(31)
    assert outbox.status() == "ok"
    await outbox.close()

    from_disk = read_backlog(tmp_path / "outbox", clock=clock)
    assert (from_disk.count, from_disk.oldest_age_seconds) == (1, pytest.approx(31))
    assert from_disk.stored_bytes == entry_size(TOPIC, b"org", b"second")


async def test_backlog_past_the_warning_size_is_a_warning(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1000, warn_fraction=0.5)
    await outbox.append(TOPIC, b"org", b"x" * 400)
    assert outbox.status() == "ok"
    await outbox.append(TOPIC, b"org", b"x" * 100)
    assert outbox.status() == "warn"
    await outbox.close()


async def test_a_cancelled_caller_does_not_lose_or_break_other_appends(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    tasks = [asyncio.create_task(outbox.append(TOPIC, b"org", b"v%d" % n)) for n in range(20)]
    await asyncio.sleep(0)
    tasks[5].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await outbox.append(TOPIC, b"org", b"after")
    assert outbox.backlog().count == 21  # the cancelled caller's entry was committed all the same
    await outbox.close()


async def test_close_commits_what_is_queued_and_refuses_later_appends(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    pending = [asyncio.create_task(outbox.append(TOPIC, b"org", b"v")) for _ in range(50)]
    await asyncio.sleep(0)
    await outbox.close()
    await asyncio.gather(*pending)
    with pytest.raises(OutboxError):
        await outbox.append(TOPIC, b"org", b"late")
    assert read_backlog(tmp_path / "outbox").count == 50


async def test_without_fsync_commits_group_on_the_loop_and_deletes_in_chunks(tmp_path: Path) -> None:
    """Durability ``process``: the same group commit and order, the same backlog after a delete larger
    than one delete transaction."""
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 24, sync=False)
    await asyncio.gather(*(outbox.append(TOPIC, b"org", b"%d" % n) for n in range(600)))
    assert outbox.commits <= 5, outbox.commits
    entries = await outbox.read(1000)
    assert [e.value for e in entries] == [b"%d" % n for n in range(600)]
    await outbox.delete([e.seq for e in entries[:550]])
    assert outbox.backlog().count == 50
    assert outbox.backlog().stored_bytes == sum(entry_size(TOPIC, b"org", e.value) for e in entries[550:])
    await outbox.close()
    reopened = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 24, sync=False)
    assert [e.value for e in await reopened.read(1000)] == [e.value for e in entries[550:]]
    await reopened.close()


def test_durability_defaults_to_process_and_the_old_sync_switch_still_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ROUTER_OUTBOX_DURABILITY", "ROUTER_OUTBOX_SYNC"):
        monkeypatch.delenv(name, raising=False)
    assert (Settings().outbox_durability, Settings().outbox_fsync) == ("process", False)
    monkeypatch.setenv("ROUTER_OUTBOX_SYNC", "true")
    assert (Settings().outbox_durability, Settings().outbox_fsync) == ("machine", True)
    monkeypatch.setenv("ROUTER_OUTBOX_DURABILITY", "process")  # the new setting wins
    assert Settings().outbox_durability == "process"
    monkeypatch.setenv("ROUTER_OUTBOX_DURABILITY", "disk")
    with pytest.raises(ValueError, match="outbox_durability"):
        Settings()
