"""`router usage backlog` and `router usage tail`, from the JSON Lines files and from Kafka."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from router_impl.cli import main
from router_impl.usage.outbox import LmdbOutbox
from router_impl.usage.sink import JsonlWriter
from tests.harness.clock import ManualClock
from tests.harness.kafka import create_topic, producer_config
from tests.harness.services import KafkaBroker

ROUTER_BIN = Path(sys.executable).with_name("router")
T0 = 1_800_000_000.0


def router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROUTER_BIN), *args], capture_output=True, text=True, timeout=30)


def follow(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ROUTER_BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    assert process.stdout is not None
    return [process.stdout.readline().strip() for _ in range(count)]


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


async def test_backlog_reads_the_outbox_while_the_router_holds_it_open(tmp_path: Path) -> None:
    clock = ManualClock(time.time() - 90)  # entries appended 90 s ago by the wall clock
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20, clock=clock)
    for n in range(4):
        await outbox.append("usage.records.v1", b"org", b"x" * (10 * n))
    held = outbox.backlog()

    done = router("usage", "backlog", "--json", "--data-dir", str(tmp_path))
    await outbox.close()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["count"], report["bytes"]) == (4, held.stored_bytes)
    assert 89 < report["oldest_age_seconds"] < 120


async def test_backlog_and_tail_print_tables_by_default(tmp_path: Path, capsys) -> None:
    outbox = LmdbOutbox(tmp_path / "outbox", max_bytes=1 << 20)
    await outbox.append("usage.records.v1", b"org", b"x" * 10)
    await outbox.close()
    assert main(["usage", "backlog", "--data-dir", str(tmp_path)]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["FIELD", "VALUE"] and ["count", "1"] in rows
    record = {"timestamp": "2026-11-27T00:00:00Z", "request_id": "r-1", "model": "demo", "tokens_input": 7}
    write_files(tmp_path / "usage", "usage", [record, {"n": 1}], max_bytes=1 << 20)
    assert main(["usage", "tail", "--dir", str(tmp_path / "usage")]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["TIMESTAMP", "REQUEST_ID", "ORGANIZATION_ID", "MODEL"]
    assert first.split()[:4] == ["2026-11-27T00:00:00Z", "r-1", "-", "demo"]
    assert first.index("demo") == header.index("MODEL")  # columns line up under their names
    assert second.split()[:2] == ["-", "-"]  # a record without these fields still prints a row


def test_backlog_of_a_data_dir_without_an_outbox_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["usage", "backlog", "--data-dir", str(tmp_path)]) == 1
    assert "no usage outbox" in capsys.readouterr().err


def write_files(directory: Path, prefix: str, values: list[dict[str, Any]], max_bytes: int = 60) -> None:
    writer = JsonlWriter(
        directory, prefix=prefix, max_bytes=max_bytes, now=lambda: datetime(2026, 11, 27, tzinfo=UTC)
    )
    for value in values:
        writer.write(json.dumps(value).encode())
    writer.close()


def test_tail_prints_the_last_records_across_rotated_files(tmp_path: Path, capsys) -> None:
    write_files(tmp_path, "usage", [{"n": n} for n in range(12)])  # ~4 lines per file
    write_files(tmp_path, "audit", [{"a": n} for n in range(3)])

    assert main(["usage", "tail", "--json", "--dir", str(tmp_path), "-n", "6"]) == 0
    assert [json.loads(x)["n"] for x in capsys.readouterr().out.splitlines()] == list(range(6, 12))
    assert main(["usage", "tail", "--json", "--dir", str(tmp_path), "--from-beginning"]) == 0
    assert [json.loads(x)["n"] for x in capsys.readouterr().out.splitlines()] == list(range(12))
    assert main(["usage", "tail", "--json", "--dir", str(tmp_path), "--audit", "-n", "2"]) == 0
    assert [json.loads(x)["a"] for x in capsys.readouterr().out.splitlines()] == [1, 2]


def test_tail_follow_prints_new_records_also_after_rotation(tmp_path: Path, stop_later) -> None:
    write_files(tmp_path, "usage", [{"n": 0}, {"n": 1}])
    process = follow("usage", "tail", "--json", "--dir", str(tmp_path), "-n", "1", "--follow")
    stop_later.append(process)
    assert read_lines(process, 1) == ['{"n": 1}']
    writer = JsonlWriter(
        tmp_path, prefix="usage", max_bytes=60, now=lambda: datetime(2026, 11, 28, tzinfo=UTC)
    )
    for n in range(2, 8):  # a new day's files, rotating on size too
        writer.write(json.dumps({"n": n}).encode())
    writer.close()
    assert [json.loads(x)["n"] for x in read_lines(process, 6)] == list(range(2, 8))


@pytest.fixture
def usage_topic(kafka_broker: KafkaBroker) -> str:
    topic = f"usage-tail-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_broker.bootstrap, topic, partitions=2)
    return topic


def produce(bootstrap: str, topic: str, numbers: range) -> None:
    producer = Producer(producer_config(bootstrap))
    for n in numbers:
        producer.produce(
            topic, json.dumps({"n": n}).encode(), f"org-{n % 3}".encode(), timestamp=int(T0 * 1000) + n
        )
    assert producer.flush(10) == 0


def test_tail_prints_the_last_records_of_a_kafka_topic_in_time_order(
    kafka_broker: KafkaBroker, usage_topic: str, capsys
) -> None:
    produce(kafka_broker.bootstrap, usage_topic, range(20))
    tail = ["usage", "tail", "--json", "--kafka", kafka_broker.bootstrap, "--topic", usage_topic]
    assert main([*tail, "-n", "5"]) == 0
    assert [json.loads(x)["n"] for x in capsys.readouterr().out.splitlines()] == list(range(15, 20))
    assert main([*tail, "--from-beginning"]) == 0
    assert sorted(json.loads(x)["n"] for x in capsys.readouterr().out.splitlines()) == list(range(20))
    assert (
        main(["usage", "tail", "--json", "--kafka", kafka_broker.bootstrap, "--topic", "no-such-topic"]) == 1
    )


def test_tail_follow_prints_records_as_they_are_published_to_kafka(
    kafka_broker: KafkaBroker, usage_topic: str, stop_later
) -> None:
    produce(kafka_broker.bootstrap, usage_topic, range(3))
    process = follow(
        "usage", "tail", "--json", "--kafka", kafka_broker.bootstrap, "--topic", usage_topic, "-n", "1", "-f"
    )
    stop_later.append(process)
    assert read_lines(process, 1) == ['{"n": 2}']
    produce(kafka_broker.bootstrap, usage_topic, range(3, 6))
    assert sorted(json.loads(x)["n"] for x in read_lines(process, 3)) == [3, 4, 5]
