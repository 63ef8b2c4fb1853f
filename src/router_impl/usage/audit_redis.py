"""The shared audit store on Redis: every replica writes and reads one index.

Keys (prefix ``audit:`` by default):

- ``ev:<event id>``: the event's AuditRecord JSON, expiring when the event leaves retention;
- ``req:{<org>}:<request id>``: the positions of the request's events in that organisation (its
  record there is the latest), so another organisation reusing the id never hides it;
- ``req:<request id>``: the positions of the id's events in every organisation (an unrestricted
  lookup reads the newest);
- ``all``, ``org:<org>``, ``act:<action>:all``, ``act:<action>:org:<org>``: the streams a page scans;
- ``orgs``: organisations by their latest event's time, so ``sweep`` can find every org stream.

Index sets hold positions ``<15-digit ms>:<event id>`` at score 0, so Redis orders them bytewise by
(time, event id) and a page, a time window or a retention trim is one ``BYLEX`` range. One write is
one script call (one round trip); each write also trims the streams it touches, and every set
expires once idle for the retention, so ``sweep`` only finishes what traffic left. Reads judge
retention themselves.

Not for Redis Cluster: an event's keys live in different slots. Any Redis failure surfaces as
AuditUnavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router_impl.redis_mux import RedisMux
from router_impl.usage.audit import (
    DEFAULT_RETENTION_SECONDS,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditUnavailable,
    audit_record_json,
    decode_cursor,
    encode_cursor,
    event_from_json,
    page_limit,
    position,
    retention_cutoff_ms,
    to_ms,
)

_MS_DIGITS = 15
_MAX_MS = 10**_MS_DIGITS - 1
_ACTIONS = ("REQUEST_ALLOWED", "REQUEST_DENIED", "POLICY_UPDATE", "LIMIT_RESET", "KEY_CREATED", "KEY_REVOKED")

# One write, one script (a MULTI of 22 commands cost ~0.5 ms of client CPU per event).
# KEYS: event, orgs, then the index sets (request in org, request, all, all+action, org, org+action).
# ARGV: record JSON, ttl_ms, position, retention cutoff (exclusive lex bound), org, event ms.
_WRITE = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[3])
  redis.call('ZREMRANGEBYLEX', KEYS[i], '-', ARGV[4])
  -- a set lives as long as its newest event
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
redis.call('ZADD', KEYS[2], 'GT', ARGV[6], ARGV[5])
return 1
"""


def _member(millis: int, event_id: str) -> str:
    return f"{min(millis, _MAX_MS):0{_MS_DIGITS}d}:{event_id}"


def _split(member: bytes | str) -> tuple[int, str]:
    text = member.decode() if isinstance(member, bytes) else member
    millis, _, event_id = text.partition(":")
    return int(millis), event_id


class RedisAuditLog:
    def __init__(
        self,
        client: Redis,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        key_prefix: str = "audit:",
        *,
        scripts: RedisMux | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._redis = client
        # On the pipelined connection, writes recorded in the same loop turn share one round trip.
        self._write = (scripts or client).register_script(_WRITE)
        self._retention = retention_seconds
        self._prefix = key_prefix
        self._clock = clock

    def _stream(self, organization_id: str | None, action: str | None) -> str:
        org = "all" if organization_id is None else f"org:{organization_id}"
        return self._prefix + (org if action is None else f"act:{action}:{org}")

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}ev:{event_id}"

    def _request_key(self, request_id: str, organization_id: str | None = None) -> str:
        if organization_id is None:
            return f"{self._prefix}req:{request_id}"
        return f"{self._prefix}req:{{{organization_id}}}:{request_id}"

    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        data = data or audit_record_json(event)
        millis, event_id = position(event)
        now = self._clock()
        cutoff = "(" + _member(retention_cutoff_ms(now, self._retention), "")
        ttl = max(millis + int(self._retention * 1000) - int(now * 1000), 1)
        org, action = event.organization_id, event.action
        keys = (
            self._event_key(event_id),
            self._prefix + "orgs",
            self._request_key(event.request_id, org),
            self._request_key(event.request_id),
            self._stream(None, None),
            self._stream(None, action),
            self._stream(org, None),
            self._stream(org, action),
        )
        try:
            await self._write(keys=keys, args=(data, ttl, _member(millis, event_id), cutoff, org, millis))
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        cutoff = retention_cutoff_ms(self._clock(), self._retention)
        try:
            latest = await self._redis.zrevrangebylex(
                self._request_key(request_id, organization_id), "+", "-", 0, 1
            )
            if not latest and organization_id is not None:
                # Written before the index held the organisation: the id's newest event, any org.
                latest = await self._redis.zrevrangebylex(self._request_key(request_id), "+", "-", 0, 1)
            if not latest:
                return None
            millis, event_id = _split(latest[0])
            if millis < cutoff:
                return None
            data = await self._redis.get(self._event_key(event_id))
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        if data is None:
            return None
        event = _decode(data)
        if organization_id is not None and event.organization_id != organization_id:
            return None  # only a legacy lookup can find another organisation's event
        return event

    async def query(self, query: AuditQuery) -> AuditPage:
        limit = page_limit(query.limit)
        lowest = retention_cutoff_ms(self._clock(), self._retention)
        if query.since is not None:
            lowest = max(lowest, to_ms(query.since))
        upper = "+"
        bounds = []
        if query.until is not None:
            bounds.append(_member(to_ms(query.until), ""))
        if query.cursor is not None:
            bounds.append(_member(*decode_cursor(query.cursor)))
        if bounds:
            upper = "(" + min(bounds)
        lower = "[" + _member(lowest, "")
        try:
            members = await self._redis.zrevrangebylex(
                self._stream(query.organization_id, query.action), upper, lower, 0, limit + 1
            )
            page = [_split(m) for m in members[:limit]]
            found = await self._redis.mget([self._event_key(e) for _, e in page]) if page else []
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        # An event that expired between the two reads is simply left out.
        items = tuple(_decode(data) for data in found if data is not None)
        next_cursor = encode_cursor(page[-1]) if len(members) > limit else None
        return AuditPage(items, next_cursor)

    async def sweep(self, now: float, *, batch_size: int = 500) -> int:
        """Delete events past retention at ``now`` from every stream; returns how many left the global
        stream. Org streams are found through ``orgs``; an org idle for the retention is forgotten."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        cutoff_ms = retention_cutoff_ms(now, self._retention)
        cutoff = "(" + _member(cutoff_ms, "")
        everything = self._stream(None, None)
        total = 0
        try:
            while True:
                due = await self._redis.zrangebylex(everything, "-", cutoff, 0, batch_size)
                if not due:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.delete(*(self._event_key(_split(m)[1]) for m in due))
                    pipe.zrem(everything, *due)
                    await pipe.execute()
                total += len(due)
                if len(due) < batch_size:
                    break
            orgs: Sequence[Any] = await self._redis.zrange(self._prefix + "orgs", 0, -1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for org in (None, *(o.decode() if isinstance(o, bytes) else o for o in orgs)):
                    for action in (None, *_ACTIONS):
                        pipe.zremrangebylex(self._stream(org, action), "-", cutoff)
                pipe.zremrangebyscore(self._prefix + "orgs", "-inf", f"({cutoff_ms}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        return total


def _decode(data: bytes | str) -> AuditEvent:
    try:
        return event_from_json(data)
    except ValueError as exc:  # written by a newer format, or corrupt
        raise AuditUnavailable(f"unreadable audit event: {exc}") from exc
