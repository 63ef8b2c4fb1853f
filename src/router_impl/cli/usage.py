"""`router usage backlog` (what waits in the outbox) and `router usage tail` (what was published),
as tables, or with `--json` as JSON (tail: one record per line, as published).

``backlog`` opens the outbox LMDB read-only, so it works while the router runs. ``tail`` reads Kafka (a
consumer with a random group that assigns partitions itself: no group join, no committed offsets) or
the JSON Lines files of the embedded publisher.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from router_impl.cli.ops import AUDIT_COLUMNS, add_json_flag, cell, fields, line, show

_FOLLOW_POLL_SECONDS = 0.2
_CATCH_UP_SECONDS = 30.0  # how long tail waits for a partition to reach its end before printing
# tail's table: records stream, so columns have fixed widths (a longer value widens its row only)
USAGE_WIDTHS = {
    "timestamp": 24,
    "request_id": 36,
    "organization_id": 15,
    "model": 15,
    "backend_id": 15,
    "status_code": 6,
    "tokens_input": 6,
    "tokens_output": 6,
    "cost_usd": 10,
    "decision_reason": 0,
}
AUDIT_WIDTHS = dict(zip(AUDIT_COLUMNS, (24, 15, 15, 15, 36, 0), strict=True))


class Records:
    """Where tail writes: each record as its JSON line (``--json``), or as a table row, the column
    names before the first."""

    def __init__(self, out: TextIO, as_json: bool, widths: dict[str, int]) -> None:
        self.out, self.as_json = out, as_json
        self.widths = [max(w, len(name)) for name, w in widths.items()]
        self.columns = list(widths)
        self.started = False

    def write(self, value: bytes | None) -> None:
        text = (value or b"").decode(errors="replace")
        if not self.as_json:
            if not self.started:
                self.out.write(line([c.upper() for c in self.columns], self.widths) + "\n")
                self.started = True
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict):
                text = line([cell(record.get(c)) for c in self.columns], self.widths)
        self.out.write(text + "\n")
        self.out.flush()


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("usage", help="usage records: outbox backlog, tail of the published records")
    actions = parser.add_subparsers(dest="action", required=True)
    backlog = actions.add_parser("backlog", help="records waiting in the outbox: count, bytes, oldest age")
    backlog.add_argument("--data-dir", type=Path, help="router data dir (default: ROUTER_DATA_DIR)")
    add_json_flag(backlog)
    backlog.set_defaults(func=run_backlog)

    tail = actions.add_parser("tail", help="print published usage records (or audit events)")
    add_json_flag(tail)
    source = tail.add_mutually_exclusive_group()
    source.add_argument("--kafka", metavar="BOOTSTRAP", help="read Kafka (default: ROUTER_KAFKA_BOOTSTRAP)")
    source.add_argument("--dir", type=Path, help="read JSON Lines files (default: DATA_DIR/usage)")
    tail.add_argument("-n", "--lines", type=int, default=10, help="records before following (default 10)")
    tail.add_argument("--from-beginning", action="store_true", help="every record kept, not the last N")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("--audit", action="store_true", help="audit events instead of usage records")
    tail.add_argument("--topic", help="Kafka topic (default: ROUTER_USAGE_TOPIC or ROUTER_AUDIT_TOPIC)")
    tail.set_defaults(func=run_tail)


def _settings() -> Any:
    from router_impl.settings import Settings

    return Settings()


def run_backlog(args: argparse.Namespace) -> int:
    from router_impl.usage.outbox import OutboxError, read_backlog

    path = (args.data_dir or _settings().data_dir) / "outbox"
    if not (path / "data.mdb").exists():
        print(f"router: no usage outbox at {path}", file=sys.stderr)
        return 1
    try:
        backlog = read_backlog(path)
    except OutboxError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    report = {
        "outbox": str(path),
        "count": backlog.count,
        "bytes": backlog.stored_bytes,
        "oldest_age_seconds": round(backlog.oldest_age_seconds, 3),
    }
    return show(report, args.json, fields)


def run_tail(args: argparse.Namespace) -> int:
    if args.lines < 0:
        print("router: -n must not be negative", file=sys.stderr)
        return 2
    kafka, directory = args.kafka, args.dir
    settings = None
    if kafka is None and directory is None:
        settings = _settings()
        kafka = settings.kafka_bootstrap
        directory = None if kafka else settings.data_dir / "usage"
    out = Records(sys.stdout, args.json, AUDIT_WIDTHS if args.audit else USAGE_WIDTHS)
    try:
        if directory is not None:
            prefix = "audit" if args.audit else "usage"
            return tail_files(directory, prefix, args.lines, args.from_beginning, args.follow, out)
        topic = args.topic
        if topic is None:
            settings = settings or _settings()
            topic = settings.audit_topic if args.audit else settings.usage_topic
        return tail_kafka(kafka, topic, args.lines, args.from_beginning, args.follow, out)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. piped into head
        return 0


# -- JSON Lines files --------------------------------------------------------------------------------


def jsonl_files(directory: Path, prefix: str) -> list[Path]:
    """``{prefix}-YYYYMMDD-N.jsonl`` files, oldest first."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{8}})-(\d+)\.jsonl$")
    found: list[tuple[str, int, Path]] = []
    for path in directory.glob(f"{prefix}-*.jsonl"):
        match = pattern.match(path.name)
        if match:
            found.append((match[1], int(match[2]), path))
    return [path for _, _, path in sorted(found)]


def tail_files(
    directory: Path,
    prefix: str,
    lines: int,
    from_beginning: bool,
    follow: bool,
    out: Records,
    poll_seconds: float = _FOLLOW_POLL_SECONDS,
) -> int:
    if not directory.is_dir() and not follow:
        print(f"router: no usage files in {directory}", file=sys.stderr)
        return 1
    files = jsonl_files(directory, prefix) if directory.is_dir() else []
    collected: list[bytes] = []
    for path in files if from_beginning else reversed(files):
        found = path.read_bytes().splitlines()
        if from_beginning:
            collected.extend(found)
            continue
        collected = found[max(len(found) - (lines - len(collected)), 0) :] + collected
        if len(collected) >= lines:
            break
    for record in collected:
        out.write(record)
    if not follow:
        return 0
    current = files[-1] if files else None
    offset = current.stat().st_size if current is not None else 0
    for record in _follow_files(directory, prefix, current, offset, poll_seconds):
        out.write(record)
    return 0


def _follow_files(
    directory: Path, prefix: str, current: Path | None, offset: int, poll_seconds: float
) -> Iterator[bytes]:
    partial = b""
    while True:
        if current is not None and current.exists():
            with current.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            yield from (line for line in complete if line)
        newer = [path for path in jsonl_files(directory, prefix) if current is None or path > current]
        if newer and not partial:
            current, offset = newer[0], 0  # rotated: the old file is complete, read on in the next one
            continue
        time.sleep(poll_seconds)


# -- Kafka -------------------------------------------------------------------------------------------


def tail_kafka(
    bootstrap: str, topic: str, lines: int, from_beginning: bool, follow: bool, out: Records
) -> int:
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"router-usage-tail-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        pending = _assign(consumer, topic, lines, from_beginning)
        if pending is None:
            print(f"router: no Kafka topic {topic!r}", file=sys.stderr)
            return 1
        # Read every partition to its end (the fetch's end-of-partition, not ListOffsets: Tansu answers
        # that with a batch count). The last N across partitions by record time; from the beginning,
        # printed as they come.
        recent: dict[int, deque[tuple[int, int, int, bytes]]] = {p: deque(maxlen=lines) for p in pending}
        deadline = time.monotonic() + _CATCH_UP_SECONDS
        while pending and time.monotonic() < deadline:
            message = _next_message(consumer, pending)
            if message is None:
                continue
            if from_beginning:
                out.write(message.value())
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            item = (message.timestamp()[1], partition, offset, message.value() or b"")
            recent.setdefault(partition, deque(maxlen=lines)).append(item)
        latest = sorted(item for items in recent.values() for item in items)
        for *_, value in latest[max(len(latest) - lines, 0) :]:
            out.write(value)
        while follow:
            message = _next_message(consumer, set())
            if message is not None:
                out.write(message.value())
        return 0
    except KafkaException as exc:
        print(f"router: Kafka error: {exc}", file=sys.stderr)
        return 1
    finally:
        consumer.close()


def _assign(consumer: Any, topic: str, lines: int, from_beginning: bool) -> set[int] | None:
    """Assign every partition from its start (or N before its end); returns the partitions."""
    from confluent_kafka import TopicPartition

    found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None:
        return None
    assignment = []
    for partition in sorted(found.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        start = low if from_beginning else max(low, high - lines)
        assignment.append(TopicPartition(topic, partition, start))
    consumer.assign(assignment)
    return set(found.partitions)


def _next_message(consumer: Any, pending: set[int]) -> Any:
    """The next record, or None (nothing yet, or a partition's end: dropped from ``pending``)."""
    from confluent_kafka import KafkaError, KafkaException

    message = consumer.poll(0.2)
    if message is None:
        return None
    error = message.error()
    if error is None:
        return message
    if error.code() == KafkaError._PARTITION_EOF:
        pending.discard(message.partition() or 0)
        return None
    raise KafkaException(error)
