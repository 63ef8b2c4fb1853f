"""The shared limit store on Redis: one Lua script per admit, per adjust and per snapshot, atomically.

The caller names every key (all of one plan carry the organisation's ``{org}`` hash tag, so a script
touches one Redis Cluster slot); the scripts use only ``KEYS[]``. Layout:

- bucket: a hash ``{level, ts_ms}``; ``level`` is written with ``%.17g`` so the double round-trips
  exactly and the Lua arithmetic is the same IEEE double arithmetic as ``store.refilled``. Its PEXPIRE
  is the time to refill to full plus ``expiry_margin_ms`` (clock skew between replicas), so an idle
  bucket vanishes, which reads as full.
- counter: an integer string with PEXPIREAT ``expires_at_ms``.
- lockout: the period name (``DAILY``/``MONTHLY``) with PEXPIREAT its ``until_ms``.
- leases of an organisation: a sorted set (``Lease.key``) of lease ids scored by ``until_ms``, and a
  hash (``Lease.held_key``) of id -> what the lease holds (JSON: the exact bucket and counter keys and
  amounts). The admit script reaps first (``ZRANGEBYSCORE -inf now``, at most ``REAP_BATCH``), then
  records its own lease; the adjust script ends its lease (ZSCORE tells it whether it was reaped).
  Both keys live ``LEASE_KEEP_MS`` after the last leased admit.

Expiry is judged against the caller's ``now_ms`` exactly as the embedded store does it: a counter or
lockout whose PEXPIRETIME is at or before ``now_ms`` reads as absent even if Redis has not dropped it
yet. With ``redis_clock`` (what the router runs) ``now`` is Redis's own TIME instead, so every replica
refills a shared bucket on one clock whatever its own says, and a lease is due its term after the admit
by that clock too (``Lease.until_ms`` - ``now_ms``), so a replica whose clock is behind Redis's never
has its live leases reaped; budget periods (which counter key, when it and a lockout expire) are still
chosen by the caller's clock, so a replica skewed by *s* moves a period boundary by *s*.
A script reads every key before it writes any, so a refusal or an error (a key of the wrong type)
changes nothing. Counters stay exact below 2**53 (Lua numbers are doubles).

The scripts run on ``scripts`` (the request path's pipelined connection, ``redis_mux``) when given,
else on the client; command timeouts are theirs. Any Redis failure surfaces as
``LimitStoreUnavailable``. The client must return bytes (``decode_responses=False``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from router_impl.limits.idempotency_redis import decodes_responses
from router_impl.limits.store import (
    REAP_BATCH,
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    CounterAdjust,
    CounterRefused,
    Decision,
    Lease,
    LimitStoreUnavailable,
    LockedOut,
    Period,
    Snapshot,
)
from router_impl.redis_mux import RedisMux, Script

DEFAULT_EXPIRY_MARGIN_MS = 60_000
# An organisation's lease keys live this long after its last leased admit: past the longest period
# (a month), so every counter a forgotten lease names has expired and reaping it would change nothing.
LEASE_KEEP_MS = 35 * 86_400_000

# The bucket math of store.refilled, in Lua: returns the level at now and the stamp to store. ``clock``
# is the script's now: the caller's ``now_ms``, or '' for Redis's own clock (TIME, whole ms).
_BUCKET_LUA = """
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bucket_at(key, cap, per, now)
  local state = redis.call('HMGET', key, 'level', 'ts_ms')
  if not state[1] then return cap, now end
  local level, ts = tonumber(state[1]), tonumber(state[2])
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  level = level + elapsed * per
  if level > cap then level = cap end
  if ts < now then ts = now end
  return level, ts
end

local function put_bucket(key, level, ts, cap, per, margin)
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'ts_ms', string.format('%d', ts))
  local ttl = math.ceil((cap - level) / per) + margin
  if ttl > 70368744177664 then ttl = 70368744177664 end
  redis.call('PEXPIRE', key, string.format('%d', ttl))
end

local function used_at(key, now)
  local expires = redis.call('PEXPIRETIME', key)
  if expires == -2 or (expires >= 0 and expires <= now) then return 0 end
  local used = tonumber(redis.call('GET', key))
  if not used then error('limit store counter ' .. key .. ' is not a number') end
  return used
end

local function lockout_at(key, now)
  local lock_until = redis.call('PEXPIRETIME', key)
  if lock_until > now then return lock_until, redis.call('GET', key) end
  return nil, nil
end
"""

# Gives back what the leases due by now hold (at most `batch`, oldest first), then drops them. Reads
# everything before it writes, so a key of the wrong type fails it with nothing changed. A counter past
# its period is left alone (its exact key was leased, so yesterday's reservation never lands in today).
_REAP_LUA = """
local function reap(lease_key, held_key, now, margin, batch)
  local due = redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'LIMIT', 0, batch)
  if #due == 0 then return end
  local records = redis.call('HMGET', held_key, unpack(due))
  local buckets, bucket_order, counters, counter_order = {}, {}, {}, {}
  for n = 1, #due do
    if records[n] then
      local held = cjson.decode(records[n])
      for _, b in ipairs(held[1]) do
        local key, cap, per = b[1], tonumber(b[2]), tonumber(b[3])
        local s = buckets[key]
        if not s then
          local level, ts = bucket_at(key, cap, per, now)
          s = {level = level, ts = ts}
          buckets[key] = s
          bucket_order[#bucket_order + 1] = key
        end
        s.level = s.level + tonumber(b[4])
        if s.level > cap then s.level = cap end
        s.cap, s.per = cap, per
      end
      for _, c in ipairs(held[2]) do
        local key = c[1]
        if counters[key] == nil then
          local expires = redis.call('PEXPIRETIME', key)
          if expires == -2 or (expires >= 0 and expires <= now) then
            counters[key] = false
          else
            counters[key] = used_at(key, now)
          end
          counter_order[#counter_order + 1] = key
        end
        if counters[key] then
          local used = counters[key] - c[2]
          if used < 0 then used = 0 end
          counters[key] = used
        end
      end
    end
  end
  for _, key in ipairs(bucket_order) do
    local s = buckets[key]
    put_bucket(key, s.level, s.ts, s.cap, s.per, margin)
  end
  for _, key in ipairs(counter_order) do
    if counters[key] then redis.call('SET', key, string.format('%d', counters[key]), 'KEEPTTL') end
  end
  redis.call('ZREM', lease_key, unpack(due))
  redis.call('HDEL', held_key, unpack(due))
end
"""

# KEYS lockout, buckets, counters (plan order), then the lease keys (sorted set, hash) when leased;
# ARGV now_ms, margin_ms, bucket count, lease id ('' without a lease), lease term ms, what it holds
# (JSON; '' when nothing), reap batch, lease keep_ms, then capacity, per_ms, cost of each bucket,
# then limit, amount, expires_at_ms, period of each counter
ADMIT_SCRIPT = (
    _BUCKET_LUA
    + _REAP_LUA
    + """
local now, margin, nb = clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_id, held = ARGV[4], ARGV[6]
local nl = 0
if lease_id ~= '' then nl = 2 end
local nc = #KEYS - 1 - nb - nl
local lease_key, held_key = KEYS[2 + nb + nc], KEYS[3 + nb + nc]
if nl == 2 then reap(lease_key, held_key, now, margin, tonumber(ARGV[7])) end
local lock_until, period = lockout_at(KEYS[1], now)
if lock_until then return {'locked', lock_until, period} end
local levels, stamps = {}, {}
for i = 1, nb do
  local a = 8 + 3 * (i - 1)
  local level, ts = bucket_at(KEYS[1 + i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), now)
  local cost = tonumber(ARGV[a + 3])
  if level < cost then return {'bucket', i, string.format('%.17g', level)} end
  levels[i], stamps[i] = level - cost, ts
end
local used = {}
for j = 1, nc do
  local a = 8 + 3 * nb + 4 * (j - 1)
  local before = used_at(KEYS[1 + nb + j], now)
  if before + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) then
    if before >= tonumber(ARGV[a + 1]) then redis.call('SET', KEYS[1], ARGV[a + 4], 'PXAT', ARGV[a + 3]) end
    return {'counter', j, before}
  end
  used[j] = before + tonumber(ARGV[a + 2])
end
local out = {'ok'}
for i = 1, nb do
  local a = 8 + 3 * (i - 1)
  put_bucket(KEYS[1 + i], levels[i], stamps[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), margin)
  out[#out + 1] = string.format('%.17g', levels[i])
end
for j = 1, nc do
  local a = 8 + 3 * nb + 4 * (j - 1)
  redis.call('SET', KEYS[1 + nb + j], string.format('%d', used[j]), 'PXAT', ARGV[a + 3])
  out[#out + 1] = used[j]
end
if nl == 2 and held ~= '' then
  redis.call('ZADD', lease_key, now + tonumber(ARGV[5]), lease_id)
  redis.call('HSET', held_key, lease_id, held)
  redis.call('PEXPIRE', lease_key, ARGV[8])
  redis.call('PEXPIRE', held_key, ARGV[8])
end
return out
"""
)

# KEYS the lease keys (sorted set, hash) when leased, then buckets, counters; ARGV now_ms, margin_ms,
# bucket count, lease id ('' without a lease), then capacity, per_ms, delta, reserved of each bucket,
# then delta, reserved, expires_at_ms of each counter. A lease already reaped had its reservation
# given back: the reserved amounts are charged again, so the actual figures count in full.
ADJUST_SCRIPT = (
    _BUCKET_LUA
    + """
local now, margin, nb, lease_id = clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local nl, late = 0, false
if lease_id ~= '' then
  nl = 2
  late = not redis.call('ZSCORE', KEYS[1], lease_id)
end
local nc = #KEYS - nl - nb
local levels, stamps, used = {}, {}, {}
for i = 1, nb do
  local a = 4 + 4 * (i - 1)
  local cap = tonumber(ARGV[a + 1])
  local level, ts = bucket_at(KEYS[nl + i], cap, tonumber(ARGV[a + 2]), now)
  local delta = tonumber(ARGV[a + 3])
  if late then delta = delta - tonumber(ARGV[a + 4]) end
  level = level + delta
  if level > cap then level = cap end
  levels[i], stamps[i] = level, ts
end
for j = 1, nc do
  local a = 4 + 4 * nb + 3 * (j - 1)
  local delta = tonumber(ARGV[a + 1])
  if late then delta = delta + tonumber(ARGV[a + 2]) end
  local after = used_at(KEYS[nl + nb + j], now) + delta
  if after < 0 then after = 0 end
  used[j] = after
end
for i = 1, nb do
  local a = 4 + 4 * (i - 1)
  put_bucket(KEYS[nl + i], levels[i], stamps[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), margin)
end
for j = 1, nc do
  local a = 4 + 4 * nb + 3 * (j - 1)
  redis.call('SET', KEYS[nl + nb + j], string.format('%d', used[j]), 'PXAT', ARGV[a + 3])
end
if nl == 2 and not late then
  redis.call('ZREM', KEYS[1], lease_id)
  redis.call('HDEL', KEYS[2], lease_id)
end
return 1
"""
)

# KEYS lockout, buckets, counters; ARGV now_ms, bucket count, then capacity, per_ms of each bucket.
# Returns lockout until_ms (0: none), its period, each bucket's level, each counter's usage.
SNAPSHOT_SCRIPT = (
    _BUCKET_LUA
    + """
local now, nb = clock(ARGV[1]), tonumber(ARGV[2])
local lock_until, period = lockout_at(KEYS[1], now)
local out = {lock_until or 0, period or ''}
for i = 1, nb do
  local level = bucket_at(KEYS[1 + i], tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2]), now)
  out[#out + 1] = string.format('%.17g', level)
end
for j = 2 + nb, #KEYS do
  out[#out + 1] = used_at(KEYS[j], now)
end
return out
"""
)

_PERIODS: dict[bytes, Period] = {b"DAILY": "DAILY", b"MONTHLY": "MONTHLY"}
_GLOB_SPECIAL = frozenset("\\*?[]")


class RedisLimitStore:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        scripts: RedisMux | None = None,
        expiry_margin_ms: int = DEFAULT_EXPIRY_MARGIN_MS,
        redis_clock: bool = False,
    ) -> None:
        """``redis_clock``: decide on Redis's clock (TIME inside each script) instead of the caller's
        ``now_ms``, so that replicas whose clocks differ share one bucket exactly (the router's setting)."""
        if decodes_responses(redis):
            raise ValueError("RedisLimitStore needs a client with decode_responses=False")
        if expiry_margin_ms < 0:
            raise ValueError("expiry_margin_ms must not be negative")
        self._redis = redis
        self._margin_ms = expiry_margin_ms
        self._redis_clock = redis_clock
        host = scripts or redis
        self._admit = host.register_script(ADMIT_SCRIPT)
        self._adjust = host.register_script(ADJUST_SCRIPT)
        self._snapshot = host.register_script(SNAPSHOT_SCRIPT)

    async def admit(self, plan: AdmitPlan) -> Decision:
        lease = plan.lease
        figures = [(_num(b.capacity), _num(b.per_ms), _num(b.cost)) for b in plan.buckets]
        args: list[str | int] = [self._now(plan.now_ms), self._margin_ms, len(plan.buckets)]
        # The lease's term, not its instant: its deadline is set on the clock that reaps it (the script's).
        term_ms = 0 if lease is None else lease.until_ms - plan.now_ms
        args += (lease.id, term_ms, _held(plan, figures)) if lease is not None else ("", 0, "")
        args += (REAP_BATCH, LEASE_KEEP_MS)
        for three in figures:
            args += three
        for c in plan.counters:
            args += (c.limit, c.amount, _instant(c.expires_at_ms), c.period)
        keys = [plan.lockout_key, *(b.key for b in plan.buckets), *(c.key for c in plan.counters)]
        if lease is not None:
            keys += (lease.key, lease.held_key)
        reply = await self._run(self._admit, keys, args)
        outcome = reply[0]
        if outcome == b"ok":
            nb = len(plan.buckets)
            return Admitted(tuple(float(v) for v in reply[1 : 1 + nb]), tuple(reply[1 + nb :]))
        if outcome == b"bucket":
            return BucketRefused(reply[1] - 1, float(reply[2]))
        if outcome == b"counter":
            return CounterRefused(reply[1] - 1, reply[2])
        return LockedOut(reply[1], _period(reply[2]))

    async def adjust(
        self,
        buckets: tuple[BucketAdjust, ...],
        counters: tuple[CounterAdjust, ...],
        now_ms: int,
        lease: Lease | None = None,
    ) -> None:
        if not buckets and not counters:
            return
        lease_id = "" if lease is None else lease.id
        args: list[str | int] = [self._now(now_ms), self._margin_ms, len(buckets), lease_id]
        for b in buckets:
            args += (_num(b.capacity), _num(b.per_ms), _num(b.delta), _num(b.reserved))
        for c in counters:
            args += (c.delta, c.reserved, _instant(c.expires_at_ms))
        keys = [] if lease is None else [lease.key, lease.held_key]
        keys += (*(b.key for b in buckets), *(c.key for c in counters))
        await self._run(self._adjust, keys, args)

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        args: list[str | int] = [self._now(now_ms), len(buckets)]
        for b in buckets:
            args += (_num(b.capacity), _num(b.per_ms))
        reply = await self._run(self._snapshot, [lockout_key, *(b.key for b in buckets), *counter_keys], args)
        nb = len(buckets)
        return Snapshot(
            levels=tuple(float(v) for v in reply[2 : 2 + nb]),
            used=tuple(reply[2 + nb :]),
            lockout=LockedOut(reply[0], _period(reply[1])) if reply[0] else None,
        )

    def _now(self, now_ms: int) -> str | int:
        return "" if self._redis_clock else now_ms

    async def clear(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """Keys Redis still holds count as existing, even when past their expiry by the caller's clock."""
        return tuple(key for key, existed in zip(keys, await self._delete(keys), strict=True) if existed)

    async def clear_prefix(self, prefix: str) -> tuple[str, ...]:
        """SCAN for ``prefix*`` (a pass over the whole keyspace: admin rate only), then delete."""
        if not prefix:
            raise ValueError("an empty prefix would clear every limit")
        pattern = "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in prefix) + "*"
        try:
            found = list(
                dict.fromkeys([key async for key in self._redis.scan_iter(match=pattern, count=1000)])
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        deleted = await self._delete(found)
        return tuple(
            key.decode("utf-8", "backslashreplace")
            for key, existed in zip(found, deleted, strict=True)
            if existed
        )

    async def _delete(self, keys: Sequence[str | bytes]) -> list[bool]:
        """DEL each key in one round trip (no script: the keys may span slots); which ones existed."""
        if not keys:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(key)
                return [bool(count) for count in await pipe.execute()]
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    @staticmethod
    async def _run(script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:  # TimeoutError and ConnectionError are OSErrors
            raise _unavailable(exc) from exc


def _held(plan: AdmitPlan, figures: list[tuple[str, str, str]]) -> str:
    """What the plan's lease holds, as the reap script reads it: token buckets' [key, capacity, per_ms,
    cost] (``figures``: as the script's arguments, exact strings) and counters' [key, amount]; ''
    when nothing (no lease then)."""
    buckets = [[b.key, *f] for b, f in zip(plan.buckets, figures, strict=True) if b.kind == "tokens"]
    counters = [[c.key, c.amount] for c in plan.counters]
    return json.dumps([buckets, counters], separators=(",", ":")) if buckets or counters else ""


def _num(value: float) -> str:
    """A float as Lua's tonumber reads it back exactly (repr is the shortest round-tripping form)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"limit figures must be finite, not {value!r}")
    return repr(number)


def _instant(ms: int) -> int:
    """An expiry for PXAT, checked before the script runs: Redis rejects one <= 0 mid-way through."""
    if ms <= 0:
        raise ValueError(f"expires_at_ms must be a positive Unix time in ms, not {ms!r}")
    return ms


def _period(raw: bytes) -> Period:
    try:
        return _PERIODS[raw]
    except KeyError:
        raise LimitStoreUnavailable(f"unreadable lockout period {raw!r}") from None


def _unavailable(exc: BaseException) -> LimitStoreUnavailable:
    return LimitStoreUnavailable(f"limit store (Redis) failed: {type(exc).__name__}: {exc}"[:300])
