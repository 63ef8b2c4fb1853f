"""Idempotency on client request ids (FR-7): the port, its domain types, the pure rules all adapters obey.

A client retries with the same key (``request_id`` on /v1/inference, ``Idempotency-Key`` on the OpenAI
routes); keys are scoped per organisation. ``begin`` decides, atomically per key:

- no live entry: the caller **proceeds** and holds an in-flight marker for a *lease* (120 s by default);
  the marker lapses by itself, so a crashed router never wedges a key;
- a completed entry with the same fingerprint: the stored reply is **replayed**: not forwarded, not billed;
- any live entry with a different fingerprint: ``Conflict("IDEMPOTENCY_CONFLICT")`` (409), whether the
  first request is finished or not: the key was reused for another request, which no wait can fix;
- an in-flight entry with the same fingerprint: ``Conflict("REQUEST_IN_PROGRESS")`` (409) at once, with a
  ``Retry-After`` hint (clients such as the ``openai`` SDK retry a 409 after it).
  We answer rather than wait for the first attempt: waiting would hold a connection and a worker for up
  to the backend deadline, on a reply that may never come (the first attempt can fail and release the
  key), and across replicas it would need polling or pub/sub. Clients already retry 409s with backoff;
  this is also what draft-ietf-httpapi-idempotency-key-header prescribes for concurrent duplicates.

Crash recovery: an in-flight entry records its *owner* (the process, ``owners.owner_id``) and lasts
until the request's deadline (``begin(deadline=...)``, at most the lease). A retry proceeds once the
deadline has passed, or at once when the store knows the owner is dead (a SIGKILLed router: on one host
``/proc`` says so; in Redis its owner key is gone, cleared by its successor on the same data dir or
lapsed), so clients are not locked out for the whole lease.

The holder then either ``complete``\\ s (successes *and* client errors, 4xx, are stored for the TTL,
24 h by default) or ``release``\\ s after a retryable failure (backend unavailable, timeout, 5xx: the
caller decides), so a retry runs afresh. Both take the token ``begin`` handed out and do nothing (return
False) when the caller no longer holds the key: released, or its lapsed lease taken over by a retry. A
lease that lapsed but was not taken over still counts as held, so a slow first attempt may still store
its reply (an adapter may have garbage-collected the marker by then; ``complete`` then says False).

Stores return outcomes as values and never raise domain errors; the caller raises ``Conflict.error()``.
They raise ``IdempotencyUnavailable`` when the backing store fails; whether that fails open or closed is
the caller's policy.

``now`` comes from the caller's injected wall clock, as an aware ``datetime`` or Unix seconds (never a
monotonic clock: several processes and replicas compare the same stored instants); it is judged at
millisecond granularity, and replicas skewed by *s* seconds shift leases and TTLs by *s*. Namespace, key and
fingerprint may be arbitrary strings: stores keep them through ``compact``, which hashes anything long or
unusual.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeAlias

import orjson

from router_impl.errors import ApiError

Instant: TypeAlias = datetime | float  # an aware datetime, or Unix time in seconds
ConflictCode = Literal["IDEMPOTENCY_CONFLICT", "REQUEST_IN_PROGRESS"]

DEFAULT_TTL_SECONDS = 24 * 3600.0
DEFAULT_LEASE_SECONDS = 120.0
IN_PROGRESS_RETRY_CAP_SECONDS = 2

# Names matching this are kept as they are (readable in redis-cli); others become '#' + SHA-256 hex. '#',
# '{', '}' and '/' never match, so a kept name cannot collide with a hashed one nor break a Redis hash tag.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REPLY_FORMAT = 1


class IdempotencyUnavailable(Exception):
    """The idempotency store failed (unreachable, timed out, full); nothing about the key is known."""


@dataclass(frozen=True, slots=True)
class StoredReply:
    """What a replay sends back. Header names and values, and the content type, are HTTP header text."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Proceed:
    """Run the request; pass ``token`` to ``complete`` or ``release``."""

    token: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Answer with the stored reply; do not forward, do not bill."""

    reply: StoredReply


@dataclass(frozen=True, slots=True)
class Conflict:
    """Refuse with 409 and this catalog code; ``retry_after`` (seconds) hints when a retry may succeed."""

    code: ConflictCode
    retry_after: int | None = field(default=None, compare=False)  # a hint, not part of the outcome

    def error(self) -> ApiError:
        if self.retry_after is None:
            return ApiError(self.code)
        return ApiError(self.code, headers={"Retry-After": str(self.retry_after)})


Begin: TypeAlias = Proceed | Replay | Conflict


class IdempotencyStore(Protocol):
    async def begin(
        self, namespace: str, key: str, fingerprint: str, now: Instant, deadline: Instant | None = None
    ) -> Begin: ...

    async def complete(
        self, namespace: str, key: str, token: str, reply: StoredReply, now: Instant
    ) -> bool: ...

    async def release(self, namespace: str, key: str, token: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class InFlight:
    """A held key. ``until_ms`` is the end of the lease (the request's deadline); ``owner`` the holding
    process ("" when unknown)."""

    fingerprint: str
    token: str
    until_ms: int
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished request. ``until_ms`` is when the stored reply is forgotten."""

    fingerprint: str
    reply: StoredReply
    until_ms: int


Entry: TypeAlias = InFlight | Completed


def judge(
    entry: Entry | None, fingerprint: str, now_ms: int, owner_dead: Callable[[str], bool] | None = None
) -> Replay | Conflict | None:
    """The answer an existing entry gives a new ``begin``; None means the key is free to take (also an
    in-flight entry whose owner ``owner_dead`` says died: its request can never finish)."""
    if entry is None or entry.until_ms <= now_ms:
        return None
    if isinstance(entry, InFlight) and entry.owner and owner_dead is not None and owner_dead(entry.owner):
        return None
    if entry.fingerprint != fingerprint:
        return Conflict("IDEMPOTENCY_CONFLICT")
    if isinstance(entry, Completed):
        return Replay(entry.reply)
    return Conflict("REQUEST_IN_PROGRESS", in_progress_retry_after(entry.until_ms - now_ms))


def in_progress_retry_after(remaining_ms: int, cap_s: int = IN_PROGRESS_RETRY_CAP_SECONDS) -> int:
    """Whole seconds until a retry of an in-flight request is worth sending: the rest of its lease,
    capped (the first attempt usually ends long before), at least 1."""
    return max(1, min(cap_s, math.ceil(remaining_ms / 1000)))


def lease_until_ms(now_ms: int, lease_ms: int, deadline: Instant | None) -> int:
    """The end of an in-flight entry: the request's deadline, never beyond the lease."""
    until = now_ms + lease_ms
    return until if deadline is None else max(now_ms + 1, min(until, to_ms(deadline)))


def held_by(entry: Entry | None, token: str) -> bool:
    """Whether ``token`` may complete or release ``entry``."""
    return isinstance(entry, InFlight) and entry.token == token


def compact(text: str) -> str:
    """``text`` when short and plain, else ``'#'`` + SHA-256 hex of it: bounded, printable, collision-free."""
    if _PLAIN_NAME.fullmatch(text):
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def entry_name(namespace: str, key: str) -> str:
    """``{namespace}:key`` with both parts compacted; the braces are the Redis Cluster hash tag."""
    return f"{{{compact(namespace)}}}:{compact(key)}"


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 hex over method, path and the raw body bytes (length-prefixed, so parts cannot blur)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode("utf-8", "surrogatepass"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def new_token() -> str:
    return secrets.token_hex(16)


def to_ms(now: Instant) -> int:
    """Unix time in whole milliseconds (floor), as every adapter stores and compares instants."""
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be a timezone-aware datetime")
        return math.floor(now.timestamp() * 1000)
    return math.floor(now * 1000)


def duration_ms(seconds: float, name: str) -> int:
    milliseconds = round(seconds * 1000)
    if milliseconds < 1:
        raise ValueError(f"{name} must be at least 1 ms, got {seconds!r} s")
    return milliseconds


def encode_reply(reply: StoredReply) -> bytes:
    """A JSON head line, then the body's raw bytes (compact JSON never contains a raw newline)."""
    head = orjson.dumps([_REPLY_FORMAT, reply.status, reply.content_type, reply.headers])
    return head + b"\n" + reply.body


def decode_reply(data: bytes) -> StoredReply:
    head, newline, body = data.partition(b"\n")
    if not newline:
        raise ValueError("stored reply has no head line")
    version, status, content_type, headers = orjson.loads(head)
    if version != _REPLY_FORMAT:
        raise ValueError(f"unknown stored reply format {version!r}")
    return StoredReply(
        status=int(status),
        body=body,
        content_type=str(content_type),
        headers=tuple((str(name), str(value)) for name, value in headers),
    )
