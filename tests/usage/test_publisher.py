"""The publisher loop: oldest first, delete only what was delivered, retry, drain by a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from router_impl.usage.outbox import LmdbOutbox
from router_impl.usage.outbox_entry import OutboxEntry
from router_impl.usage.publisher import Publisher
from tests.harness.wait import eventually

TOPIC = "usage.records.v1"


class ScriptedTransport:
    """Delivers everything except what the test says; remembers each round's values."""

    def __init__(self) -> None:
        self.rounds: list[list[bytes]] = []
        self.refuse: set[bytes] = set()  # never delivered
        self.refuse_once: set[bytes] = set()
        self.raise_once = False
        self.closed = False

    async def publish(self, entries: Sequence[OutboxEntry], within_seconds: float) -> set[int]:
        self.rounds.append([e.value for e in entries])
        if self.raise_once:
            self.raise_once = False
            raise ConnectionError("transport down")
        delivered = {e.seq for e in entries if e.value not in self.refuse | self.refuse_once}
        self.refuse_once.clear()
        return delivered

    async def close(self) -> None:
        self.closed = True

    @property
    def delivered_values(self) -> list[bytes]:
        return [value for round_ in self.rounds for value in round_]


def quick(outbox: LmdbOutbox, transport: ScriptedTransport) -> Publisher:
    return Publisher(outbox, transport, backoff_initial=0.01, backoff_max=0.05, idle_seconds=0.05)


async def fill(outbox: LmdbOutbox, *values: bytes) -> None:
    for value in values:
        await outbox.append(TOPIC, b"org", value)


async def test_a_record_that_failed_is_sent_again_before_anything_newer(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    await fill(outbox, b"r1", b"r2", b"r3", b"r4")
    transport = ScriptedTransport()
    transport.refuse_once = {b"r2"}
    publisher = quick(outbox, transport)
    assert await publisher.drain(5) == 0
    assert transport.rounds == [[b"r1", b"r2", b"r3", b"r4"], [b"r2"]]
    assert publisher.delivered == 4
    await publisher.close()
    await outbox.close()


async def test_a_transport_error_leaves_every_entry_for_the_next_round(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    await fill(outbox, b"r1", b"r2")
    transport = ScriptedTransport()
    transport.raise_once = True
    publisher = quick(outbox, transport)
    await publisher.start()
    await eventually(lambda: outbox.backlog().count == 0, 5, what="delivery after the error")
    assert transport.rounds == [[b"r1", b"r2"], [b"r1", b"r2"]]
    await publisher.close()
    assert transport.closed
    await outbox.close()


async def test_a_running_publisher_picks_up_new_appends_at_once(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    transport = ScriptedTransport()
    publisher = Publisher(outbox, transport, idle_seconds=30)  # woken by the commit, not by polling
    await publisher.start()
    await asyncio.sleep(0.05)
    await fill(outbox, b"r1")
    await eventually(lambda: transport.delivered_values == [b"r1"], 2, what="the new entry")
    await publisher.close()
    await outbox.close()


async def test_drain_gives_up_at_its_deadline_and_keeps_what_it_could_not_deliver(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    await fill(outbox, b"r1", b"r2", b"r3")
    transport = ScriptedTransport()
    transport.refuse = {b"r2"}
    publisher = quick(outbox, transport)
    await publisher.start()
    began = time.monotonic()
    left = await publisher.drain(0.5)
    assert 0.4 < time.monotonic() - began < 2.0
    assert left == 1
    assert publisher.failing
    await publisher.close()
    assert [e.value for e in await outbox.read(10)] == [b"r2"]
    await outbox.close()


async def test_only_one_publisher_per_data_dir_publishes_until_it_lets_go(tmp_path: Path) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    first_transport, second_transport = ScriptedTransport(), ScriptedTransport()
    first, second = quick(outbox, first_transport), quick(outbox, second_transport)
    await first.start()
    await eventually(lambda: first.lease.held, 2, what="the first publisher's lease")
    await second.start()
    await fill(outbox, b"r1")
    await eventually(lambda: outbox.backlog().count == 0, 2, what="delivery")
    await first.close()
    await fill(outbox, b"r2")
    await eventually(lambda: outbox.backlog().count == 0, 2, what="delivery by the second publisher")
    assert (first_transport.delivered_values, second_transport.delivered_values) == ([b"r1"], [b"r2"])
    await second.close()
    await outbox.close()
