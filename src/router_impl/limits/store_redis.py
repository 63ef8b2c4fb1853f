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
The scripts are ``limits/lua/*.lua`` (package data; ``buckets.lua`` holds the helpers they share), each
taking its plan as one JSON argument with named fields (``admit_plan``, ``adjust_plan``). A script
reads every key before it writes any, so a refusal or an error (a key of the wrong type)
changes nothing. Counters stay exact below 2**53 (Lua numbers are doubles).

The scripts run on ``scripts`` (the request path's pipelined connection, ``redis_mux``) when given,
else on the client; command timeouts are theirs. Any Redis failure surfaces as
``LimitStoreUnavailable``. The client must return bytes (``decode_responses=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import orjson
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
from router_impl.redis_mux import Script, ScriptHost

DEFAULT_EXPIRY_MARGIN_MS = 60_000
# An organisation's lease keys live this long after its last leased admit: past the longest period
# (a month), so every counter a forgotten lease names has expired and reaping it would change nothing.
LEASE_KEEP_MS = 35 * 86_400_000

# The scripts (limits/lua/*.lua, package data): each takes its plan as one JSON argument.
_ADMIT = ("buckets.lua", "reap.lua", "admit.lua")
_ADJUST = ("buckets.lua", "adjust.lua")
_SNAPSHOT = ("buckets.lua", "snapshot.lua")


def lua_source(*names: str) -> str:
    """The script made of these files of ``limits/lua``, in order (helpers first)."""
    folder = resources.files("router_impl.limits") / "lua"
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


_PERIODS: dict[bytes, Period] = {b"DAILY": "DAILY", b"MONTHLY": "MONTHLY"}
_GLOB_SPECIAL = frozenset("\\*?[]")


class RedisLimitStore:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        scripts: ScriptHost | None = None,
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
        self._admit = host.register_script(lua_source(*_ADMIT))
        self._adjust = host.register_script(lua_source(*_ADJUST))
        self._snapshot = host.register_script(lua_source(*_SNAPSHOT))

    async def admit(self, plan: AdmitPlan) -> Decision:
        keys = [plan.lockout_key, *(b.key for b in plan.buckets), *(c.key for c in plan.counters)]
        if plan.lease is not None:
            keys += (plan.lease.key, plan.lease.held_key)
        reply = await self._run(self._admit, keys, admit_plan(plan, self._margin_ms, self._redis_clock))
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
        keys = [] if lease is None else [lease.key, lease.held_key]
        keys += (*(b.key for b in buckets), *(c.key for c in counters))
        plan = adjust_plan(buckets, counters, now_ms, lease, self._margin_ms, self._redis_clock)
        await self._run(self._adjust, keys, plan)

    async def snapshot(
        self, buckets: tuple[BucketProbe, ...], counter_keys: tuple[str, ...], lockout_key: str, now_ms: int
    ) -> Snapshot:
        plan: dict[str, Any] = {
            "buckets": [{"cap": _num(b.capacity), "per": _num(b.per_ms)} for b in buckets]
        }
        if not self._redis_clock:
            plan["now"] = now_ms
        keys = [lockout_key, *(b.key for b in buckets), *counter_keys]
        reply = await self._run(self._snapshot, keys, orjson.dumps(plan))
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
    async def _run(script: Script, keys: Sequence[str], plan: bytes) -> Any:
        try:
            return await script(keys=keys, args=(plan,))
        except (RedisError, OSError) as exc:  # TimeoutError and ConnectionError are OSErrors
            raise _unavailable(exc) from exc


def admit_plan(plan: AdmitPlan, margin_ms: int, redis_clock: bool = False) -> bytes:
    """ARGV[1] of admit.lua: the plan as JSON (floats as their shortest exact repr, which Lua reads back
    exactly); ``now`` left out on Redis's clock."""
    encoded: dict[str, Any] = {
        "margin": margin_ms,
        "buckets": [
            {"cap": _num(b.capacity), "per": _num(b.per_ms), "cost": _num(b.cost)} for b in plan.buckets
        ],
        "counters": [
            {"limit": c.limit, "amount": c.amount, "expires": _instant(c.expires_at_ms), "period": c.period}
            for c in plan.counters
        ],
    }
    if not redis_clock:
        encoded["now"] = plan.now_ms
    if plan.lease is not None:
        lease = plan.lease
        held = _held(plan)
        # The lease's term, not its instant: its deadline is set on the clock that reaps it (the script's).
        term = lease.until_ms - plan.now_ms
        encoded["lease"] = {"id": lease.id, "term": term, "held": held, "batch": REAP_BATCH}
        encoded["lease"]["keep"] = LEASE_KEEP_MS
    return orjson.dumps(encoded)


def adjust_plan(
    buckets: tuple[BucketAdjust, ...],
    counters: tuple[CounterAdjust, ...],
    now_ms: int,
    lease: Lease | None,
    margin_ms: int,
    redis_clock: bool = False,
) -> bytes:
    """ARGV[1] of adjust.lua, as ``admit_plan``."""
    encoded: dict[str, Any] = {
        "margin": margin_ms,
        "buckets": [
            {
                "cap": _num(b.capacity),
                "per": _num(b.per_ms),
                "delta": _num(b.delta),
                "reserved": _num(b.reserved),
            }
            for b in buckets
        ],
        "counters": [
            {"delta": c.delta, "reserved": c.reserved, "expires": _instant(c.expires_at_ms)} for c in counters
        ],
    }
    if not redis_clock:
        encoded["now"] = now_ms
    if lease is not None:
        encoded["lease"] = lease.id
    return orjson.dumps(encoded)


def _held(plan: AdmitPlan) -> str:
    """What the plan's lease holds, as reap.lua reads it: token buckets' [key, capacity, per_ms, cost]
    and counters' [key, amount]; '' when nothing (no lease then)."""
    buckets = [
        [b.key, _num(b.capacity), _num(b.per_ms), _num(b.cost)] for b in plan.buckets if b.kind == "tokens"
    ]
    counters = [[c.key, c.amount] for c in plan.counters]
    return orjson.dumps([buckets, counters]).decode() if buckets or counters else ""


def _num(value: float) -> float:
    """A finite float (JSON writes its shortest exact repr, which Lua's number parser reads back exactly)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"limit figures must be finite, not {value!r}")
    return number


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
