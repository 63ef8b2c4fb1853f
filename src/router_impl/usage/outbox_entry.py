"""The outbox's entry layout: one stored usage record or audit event, as its LMDB key and value hold it.

Key: the sequence number (big-endian u64, never reused, so iteration is append order). Value: a head
(append time in ms since the epoch, topic length, key length), then the topic, the Kafka key and the
payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SEQ = struct.Struct(">Q")
HEAD = struct.Struct(">QHI")  # append time (ms since the epoch), topic length, key length


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    topic: str
    key: bytes
    value: bytes
    appended_at: float  # seconds since the epoch


def encode_entry(topic: bytes, key: bytes, value: bytes, appended_ms: int) -> bytes:
    return HEAD.pack(appended_ms, len(topic), len(key)) + topic + key + value


def decode_entry(seq_key: bytes, data: bytes) -> OutboxEntry:
    appended_ms, topic_len, key_len = HEAD.unpack_from(data)
    start = HEAD.size
    return OutboxEntry(
        seq=SEQ.unpack(seq_key)[0],
        topic=data[start : start + topic_len].decode(),
        key=data[start + topic_len : start + topic_len + key_len],
        value=data[start + topic_len + key_len :],
        appended_at=appended_ms / 1000,
    )


def stored_size(data: bytes) -> int:
    return len(data) + SEQ.size
