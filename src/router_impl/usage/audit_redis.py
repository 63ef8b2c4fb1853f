"""The shared audit store on Redis (one Redis or a Redis Cluster): every replica writes and reads one index.

Keys (prefix ``audit:`` by default), in two hash slots per event so that each write script touches
one slot of a Redis Cluster:

- the organisation's slot ``{<org>}``: ``{<org>}:org`` (its stream), ``{<org>}:org:act:<action>`` and
  ``{<org>}:org:req:<request id>`` (the positions of the request's events in that organisation, its
  record there being the latest, so another organisation reusing the id never hides it);
- the event's shard ``{#<n>}``, n = CRC32(event id) mod ``SHARDS``: ``{#n}:ev:<event id>`` (the
  AuditRecord JSON, expiring when the event leaves retention), ``{#n}:all``, ``{#n}:act:<action>``,
  ``{#n}:req:<request id>`` (the id's events in every organisation) and ``{#n}:orgs``
  (organisations by their latest event's time, so ``sweep`` can find every org stream).

So an organisation's page is one range read plus the events' GETs; an unrestricted page or request
lookup reads the ``SHARDS`` shards and merges them (admin rate), while the request path's writes
spread over ``SHARDS`` slots and every organisation's slot instead of one hot key set. Index sets hold
positions ``<15-digit ms>:<event id>`` at score 0, so Redis orders them bytewise by (time, event id) and
a page, a time window or a retention trim is one ``BYLEX`` range. One write is two script calls, one
per slot, sent together (on the pipelined connection, one round trip on one Redis); if one fails the
write raises ``AuditUnavailable`` and the event may be indexed in one slot only. Each write also trims
the streams it touches, and every set expires once idle for the retention, so ``sweep`` only finishes
what traffic left. Reads judge retention themselves. Any Redis failure surfaces as AuditUnavailable.

Events recorded by routers before this layout (keys ``audit:ev:<id>``, ``audit:all``...) are no longer
read; Redis expires them within the retention.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import zlib
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from router_impl.redis_mux import ScriptHost
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

SHARDS = 16
_MS_DIGITS = 15
_MAX_MS = 10**_MS_DIGITS - 1
_ACTIONS = ("REQUEST_ALLOWED", "REQUEST_DENIED", "POLICY_UPDATE", "LIMIT_RESET", "KEY_CREATED", "KEY_REVOKED")

# Adds a position to index sets of one slot, trimming each to the retention; a set lives as long as
# its newest event. KEYS: the index sets. ARGV: position, retention cutoff (exclusive lex bound), ttl_ms.
_INDEX = """
local ttl = tonumber(ARGV[3])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[1])
  redis.call('ZREMRANGEBYLEX', KEYS[i], '-', ARGV[2])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

# The event's shard: the record, the org by its latest event, then the index sets as _INDEX.
# KEYS: event, orgs, index sets. ARGV: position, cutoff, ttl_ms, record JSON, org, event ms.
_RECORD = """
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', ARGV[6], ARGV[5])
""" + _INDEX.replace("for i = 1,", "for i = 3,")


def _member(millis: int, event_id: str) -> str:
    return f"{min(millis, _MAX_MS):0{_MS_DIGITS}d}:{event_id}"


def _split(member: bytes | str) -> tuple[int, str]:
    text = member.decode() if isinstance(member, bytes) else member
    millis, _, event_id = text.partition(":")
    return int(millis), event_id


class RedisAuditLog:
    def __init__(
        self,
        client: Redis | RedisCluster,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        key_prefix: str = "audit:",
        *,
        scripts: ScriptHost | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}': the keys' hash tags follow it")
        self._redis = client
        # On the pipelined connection, writes recorded in the same loop turn share one round trip.
        host = scripts or client
        self._index = host.register_script(_INDEX)
        self._record = host.register_script(_RECORD)
        self._retention = retention_seconds
        self._prefix = key_prefix
        self._clock = clock

    def _org(self, organization_id: str) -> str:
        # Events of no organisation (refused before one was known): '{}' is no hash tag, so they use
        # '{-}' ('-' is no organisation id: those begin with a letter or digit).
        return f"{self._prefix}{{{organization_id or '-'}}}:org"

    def _shard(self, n: int) -> str:
        return f"{self._prefix}{{#{n}}}:"

    def _shard_of(self, event_id: str) -> str:
        return self._shard(zlib.crc32(event_id.encode()) % SHARDS)

    def _event_key(self, event_id: str) -> str:
        return f"{self._shard_of(event_id)}ev:{event_id}"

    def _stream(self, organization_id: str | None, action: str | None, shard: int = 0) -> str:
        """An organisation's stream, or one shard's stream of every organisation (of one action)."""
        if organization_id is not None:
            org = self._org(organization_id)
            return org if action is None else f"{org}:act:{action}"
        return self._shard(shard) + ("all" if action is None else f"act:{action}")

    async def record(self, event: AuditEvent, data: bytes | None = None) -> None:
        data = data or audit_record_json(event)
        millis, event_id = position(event)
        now = self._clock()
        cutoff = "(" + _member(retention_cutoff_ms(now, self._retention), "")
        ttl = max(millis + int(self._retention * 1000) - int(now * 1000), 1)
        org, action, request = event.organization_id, event.action, event.request_id
        shard, member = self._shard_of(event_id), _member(millis, event_id)
        org_keys = (self._stream(org, None), self._stream(org, action), f"{self._org(org)}:req:{request}")
        shard_keys = [f"{shard}{name}" for name in (f"ev:{event_id}", "orgs", "all", f"act:{action}")]
        shard_keys.append(f"{shard}req:{request}")
        try:
            await asyncio.gather(
                self._record(keys=shard_keys, args=(member, cutoff, ttl, data, org, millis)),
                self._index(keys=org_keys, args=(member, cutoff, ttl)),
            )
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc

    async def by_request(self, request_id: str, organization_id: str | None) -> AuditEvent | None:
        cutoff = retention_cutoff_ms(self._clock(), self._retention)
        if organization_id is None:
            sets = [f"{self._shard(n)}req:{request_id}" for n in range(SHARDS)]
        else:
            sets = [f"{self._org(organization_id)}:req:{request_id}"]
        try:
            newest = max((m for found in await self._newest(sets, "+", "-", 1) for m in found), default=None)
            if newest is None:
                return None
            millis, event_id = _split(newest)
            if millis < cutoff:
                return None
            data = await self._redis.get(self._event_key(event_id))
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        return None if data is None else _decode(data)

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
        org, action = query.organization_id, query.action
        shards = range(SHARDS) if org is None else range(1)
        try:
            found = await self._newest(
                [self._stream(org, action, n) for n in shards], upper, lower, limit + 1
            )
            members = list(heapq.merge(*found, reverse=True))[: limit + 1]
            page = [_split(m) for m in members[:limit]]
            records = await self._get_all([self._event_key(e) for _, e in page])
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        # An event that expired between the two reads is simply left out.
        items = tuple(_decode(data) for data in records if data is not None)
        next_cursor = encode_cursor(page[-1]) if len(members) > limit else None
        return AuditPage(items, next_cursor)

    async def _newest(self, sets: list[str], upper: str, lower: str, count: int) -> list[list[bytes]]:
        """Each set's ``count`` newest members in (lower, upper), in one pipeline (a round trip per node)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in sets:
                pipe.zrevrangebylex(key, upper, lower, 0, count)
            return list(await pipe.execute())

    async def _get_all(self, keys: list[str]) -> list[Any]:
        """GET each key (they span slots: no MGET), in one pipeline."""
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            return list(await pipe.execute())

    async def sweep(self, now: float, *, batch_size: int = 500) -> int:
        """Delete events past retention at ``now`` from every stream; returns how many left the global
        streams. Org streams are found through each shard's ``orgs``; an org idle for the retention is
        forgotten."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        cutoff_ms = retention_cutoff_ms(now, self._retention)
        cutoff = "(" + _member(cutoff_ms, "")
        total = 0
        orgs: set[str] = set()
        try:
            for n in range(SHARDS):
                total += await self._sweep_shard(n, cutoff, batch_size)
                found = await self._redis.zrange(f"{self._shard(n)}orgs", 0, -1)
                orgs.update(o.decode() if isinstance(o, bytes) else str(o) for o in found)
            async with self._redis.pipeline(transaction=False) as pipe:
                for org in sorted(orgs):
                    for action in (None, *_ACTIONS):
                        pipe.zremrangebylex(self._stream(org, action), "-", cutoff)
                for n in range(SHARDS):
                    for action in _ACTIONS:
                        pipe.zremrangebylex(self._stream(None, action, n), "-", cutoff)
                    pipe.zremrangebyscore(f"{self._shard(n)}orgs", "-inf", f"({cutoff_ms}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(f"audit store (Redis) failed: {type(exc).__name__}") from exc
        return total

    async def _sweep_shard(self, n: int, cutoff: str, batch_size: int) -> int:
        """Delete one shard's events past retention (they and its streams share its slot)."""
        everything, total = self._stream(None, None, n), 0
        while True:
            due = await self._redis.zrangebylex(everything, "-", cutoff, 0, batch_size)
            if not due:
                return total
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(*(self._event_key(_split(m)[1]) for m in due))
                pipe.zrem(everything, *due)
                await pipe.execute()
            total += len(due)
            if len(due) < batch_size:
                return total


def _decode(data: bytes | str) -> AuditEvent:
    try:
        return event_from_json(data)
    except ValueError as exc:  # written by a newer format, or corrupt
        raise AuditUnavailable(f"unreadable audit event: {exc}") from exc
