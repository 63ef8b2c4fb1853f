"""The shared limit store on Redis: one Lua script per admit, per adjust and per snapshot, atomically.

The caller names every key (all of one plan carry the organisation's ``{org}`` hash tag, so a script
touches one Redis Cluster slot); the scripts use only ``KEYS[]``. Layout:

- bucket: a hash ``{level, ts_ms}``; ``level`` is written with ``%.17g`` so the double round-trips
  exactly and the Lua arithmetic is the same IEEE double arithmetic as ``store.refilled``. Its PEXPIRE
  is the time to refill to full plus ``expiry_margin_ms`` (clock skew between replicas), so an idle
  bucket vanishes, which reads as full.
- counter: an integer string with PEXPIREAT ``expires_at_ms``.
- lockout: the period name (``DAILY``/``MONTHLY``) with PEXPIREAT its ``until_ms``.

Expiry is judged against the caller's ``now_ms`` exactly as the embedded store does it: a counter or
lockout whose PEXPIRETIME is at or before ``now_ms`` reads as absent even if Redis has not dropped it
yet. A script reads every key before it writes any, so a refusal or an error (a key of the wrong type)
changes nothing. Counters stay exact below 2**53 (Lua numbers are doubles).

The scripts run on ``scripts`` (the request path's pipelined connection, ``redis_mux``) when given,
else on the client; command timeouts are theirs. Any Redis failure surfaces as
``LimitStoreUnavailable``. The client must return bytes (``decode_responses=False``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router_impl.limits.store import (
    AdmitPlan,
    Admitted,
    BucketAdjust,
    BucketProbe,
    BucketRefused,
    CounterAdjust,
    CounterRefused,
    Decision,
    LimitStoreUnavailable,
    LockedOut,
    Period,
    Snapshot,
)
from router_impl.redis_mux import RedisMux

Script = Callable[..., Awaitable[Any]]

DEFAULT_EXPIRY_MARGIN_MS = 60_000

# The bucket math of store.refilled, in Lua: returns the level at now and the stamp to store.
_BUCKET_LUA = """
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

# KEYS lockout, buckets, counters (plan order); ARGV now_ms, margin_ms, bucket count,
# then capacity, per_ms, cost of each bucket, then limit, amount, expires_at_ms, period of each counter
ADMIT_SCRIPT = (
    _BUCKET_LUA
    + """
local now, margin, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local nc = #KEYS - 1 - nb
local lock_until, period = lockout_at(KEYS[1], now)
if lock_until then return {'locked', lock_until, period} end
local levels, stamps = {}, {}
for i = 1, nb do
  local a = 3 + 3 * (i - 1)
  local level, ts = bucket_at(KEYS[1 + i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), now)
  local cost = tonumber(ARGV[a + 3])
  if level < cost then return {'bucket', i, string.format('%.17g', level)} end
  levels[i], stamps[i] = level - cost, ts
end
local used = {}
for j = 1, nc do
  local a = 3 + 3 * nb + 4 * (j - 1)
  local before = used_at(KEYS[1 + nb + j], now)
  if before + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) then
    redis.call('SET', KEYS[1], ARGV[a + 4], 'PXAT', ARGV[a + 3])
    return {'counter', j, before}
  end
  used[j] = before + tonumber(ARGV[a + 2])
end
local out = {'ok'}
for i = 1, nb do
  local a = 3 + 3 * (i - 1)
  put_bucket(KEYS[1 + i], levels[i], stamps[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), margin)
  out[#out + 1] = string.format('%.17g', levels[i])
end
for j = 1, nc do
  local a = 3 + 3 * nb + 4 * (j - 1)
  redis.call('SET', KEYS[1 + nb + j], string.format('%d', used[j]), 'PXAT', ARGV[a + 3])
  out[#out + 1] = used[j]
end
return out
"""
)

# KEYS buckets, counters; ARGV now_ms, margin_ms, bucket count,
# then capacity, per_ms, delta of each bucket, then delta, expires_at_ms of each counter
ADJUST_SCRIPT = (
    _BUCKET_LUA
    + """
local now, margin, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local nc = #KEYS - nb
local levels, stamps, used = {}, {}, {}
for i = 1, nb do
  local a = 3 + 3 * (i - 1)
  local cap = tonumber(ARGV[a + 1])
  local level, ts = bucket_at(KEYS[i], cap, tonumber(ARGV[a + 2]), now)
  level = level + tonumber(ARGV[a + 3])
  if level > cap then level = cap end
  levels[i], stamps[i] = level, ts
end
for j = 1, nc do
  local a = 3 + 3 * nb + 2 * (j - 1)
  local after = used_at(KEYS[nb + j], now) + tonumber(ARGV[a + 1])
  if after < 0 then after = 0 end
  used[j] = after
end
for i = 1, nb do
  local a = 3 + 3 * (i - 1)
  put_bucket(KEYS[i], levels[i], stamps[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), margin)
end
for j = 1, nc do
  local a = 3 + 3 * nb + 2 * (j - 1)
  redis.call('SET', KEYS[nb + j], string.format('%d', used[j]), 'PXAT', ARGV[a + 2])
end
return 1
"""
)

# KEYS lockout, buckets, counters; ARGV now_ms, bucket count, then capacity, per_ms of each bucket.
# Returns lockout until_ms (0: none), its period, each bucket's level, each counter's usage.
SNAPSHOT_SCRIPT = (
    _BUCKET_LUA
    + """
local now, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
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
        redis: Redis,
        *,
        scripts: RedisMux | None = None,
        expiry_margin_ms: int = DEFAULT_EXPIRY_MARGIN_MS,
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisLimitStore needs a client with decode_responses=False")
        if expiry_margin_ms < 0:
            raise ValueError("expiry_margin_ms must not be negative")
        self._redis = redis
        self._margin_ms = expiry_margin_ms
        host = scripts or redis
        self._admit = host.register_script(ADMIT_SCRIPT)
        self._adjust = host.register_script(ADJUST_SCRIPT)
        self._snapshot = host.register_script(SNAPSHOT_SCRIPT)

    async def admit(self, plan: AdmitPlan) -> Decision:
        args: list[str | int] = [plan.now_ms, self._margin_ms, len(plan.buckets)]
        for b in plan.buckets:
            args += (_num(b.capacity), _num(b.per_ms), _num(b.cost))
        for c in plan.counters:
            args += (c.limit, c.amount, _instant(c.expires_at_ms), c.period)
        keys = [plan.lockout_key, *(b.key for b in plan.buckets), *(c.key for c in plan.counters)]
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
        self, buckets: tuple[BucketAdjust, ...], counters: tuple[CounterAdjust, ...], now_ms: int
    ) -> None:
        if not buckets and not counters:
            return
        args: list[str | int] = [now_ms, self._margin_ms, len(buckets)]
        for b in buckets:
            args += (_num(b.capacity), _num(b.per_ms), _num(b.delta))
        for c in counters:
            args += (c.delta, _instant(c.expires_at_ms))
        await self._run(self._adjust, [*(b.key for b in buckets), *(c.key for c in counters)], args)

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        args: list[str | int] = [now_ms, len(buckets)]
        for b in buckets:
            args += (_num(b.capacity), _num(b.per_ms))
        reply = await self._run(self._snapshot, [lockout_key, *(b.key for b in buckets), *counter_keys], args)
        nb = len(buckets)
        return Snapshot(
            levels=tuple(float(v) for v in reply[2 : 2 + nb]),
            used=tuple(reply[2 + nb :]),
            lockout=LockedOut(reply[0], _period(reply[1])) if reply[0] else None,
        )

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
