"""The shared idempotency store on Redis: one Lua script begins, one completes or releases, atomically.

Each key is one hash, ``<prefix>{<org>}:<key>`` (default prefix ``idem:``). The org is the Redis Cluster
hash tag, so a script only ever touches one slot. Fields: ``s`` state (``p`` in flight, ``d`` done), ``f``
fingerprint, ``t`` holder's token, ``o`` holder's owner id, ``u`` end of lease or TTL in Unix ms, ``r``
the encoded reply. A live router keeps ``<prefix>owner:<owner id>`` alive (``heartbeat``, TTL
``owner_ttl``); an in-flight entry whose owner key is gone is taken over by the next ``begin`` (a second
script call naming that owner, so the entry key stays the script's only key). Redis's
own key expiry (the lease, then the TTL) collects entries; ``u`` lets the script judge expiry against the
caller's clock exactly as the embedded stores do. Keep these keys out of ``allkeys-*`` eviction: an
evicted reply is a retry billed twice.

The scripts run on ``scripts`` (the request path's pipelined connection, ``redis_mux``) when given,
else on the client; command timeouts are theirs. Any Redis failure surfaces as
``IdempotencyUnavailable``. The client must return bytes (``decode_responses=False``): bodies need
not be UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from router_impl.limits.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_TTL_SECONDS,
    IN_PROGRESS_RETRY_CAP_SECONDS,
    Begin,
    Conflict,
    IdempotencyUnavailable,
    Instant,
    Proceed,
    Replay,
    StoredReply,
    compact,
    decode_reply,
    duration_ms,
    encode_reply,
    entry_name,
    in_progress_retry_after,
    lease_until_ms,
    new_token,
    to_ms,
)
from router_impl.limits.owners import owner_id
from router_impl.redis_mux import Script, ScriptHost

# KEYS[1] entry; ARGV fingerprint, token, now_ms, lease_until_ms, lease_ms, owner, [dead owner]
BEGIN_SCRIPT = """
local e = redis.call('HMGET', KEYS[1], 's', 'f', 'u', 'o')
local taken_over = e[1] == 'p' and ARGV[7] ~= nil and e[4] == ARGV[7]
if e[1] and tonumber(e[3] or '0') > tonumber(ARGV[3]) and not taken_over then
  local owner = ''
  if e[1] == 'p' then owner = e[4] or '' end
  if e[2] ~= ARGV[1] then return {'conflict', owner, e[3]} end
  if e[1] == 'd' then return {'replay', redis.call('HGET', KEYS[1], 'r')} end
  return {'in_progress', owner, e[3]}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[1], 't', ARGV[2], 'u', ARGV[4], 'o', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'proceed'}
"""

# KEYS[1] entry; ARGV token, then until_ms, ttl_ms, reply to complete (the token alone releases)
SETTLE_SCRIPT = """
local e = redis.call('HMGET', KEYS[1], 's', 't')
if e[1] ~= 'p' or e[2] ~= ARGV[1] then return 0 end
if #ARGV == 1 then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HDEL', KEYS[1], 't', 'o')
redis.call('HSET', KEYS[1], 's', 'd', 'u', ARGV[2], 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

DEFAULT_OWNER_TTL_SECONDS = 5.0

_OUTCOMES: dict[bytes, Begin] = {
    b"conflict": Conflict("IDEMPOTENCY_CONFLICT"),
    b"in_progress": Conflict("REQUEST_IN_PROGRESS"),
}


def decodes_responses(client: Redis | RedisCluster) -> bool:
    """Whether ``client`` decodes replies to str (the Redis stores need bytes); Redis or Redis Cluster."""
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))


class RedisIdempotencyStore:
    def __init__(
        self,
        client: Redis | RedisCluster,
        ttl: float = DEFAULT_TTL_SECONDS,
        lease: float = DEFAULT_LEASE_SECONDS,
        key_prefix: str = "idem:",
        *,
        scripts: ScriptHost | None = None,
        token_factory: Callable[[], str] = new_token,
        owner: str | None = None,
        owner_ttl: float = DEFAULT_OWNER_TTL_SECONDS,
    ) -> None:
        if decodes_responses(client):
            raise ValueError("RedisIdempotencyStore needs a client with decode_responses=False")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}': the namespace is the hash tag")
        self._ttl_ms = duration_ms(ttl, "ttl")
        self._lease_ms = duration_ms(lease, "lease")
        self._prefix = key_prefix
        self._new_token = token_factory
        self._client = client
        self.owner = owner_id() if owner is None else owner
        self._owner_ttl_ms = duration_ms(owner_ttl, "owner_ttl")
        host = scripts or client
        self._begin = host.register_script(BEGIN_SCRIPT)
        self._settle = host.register_script(SETTLE_SCRIPT)

    def redis_key(self, namespace: str, key: str) -> str:
        return self._prefix + entry_name(namespace, key)

    def owner_key(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    async def heartbeat(self) -> None:
        """Keep this process's owner key alive (call it well within ``owner_ttl``)."""
        await self._command(self._client.set(self.owner_key(self.owner), b"1", px=self._owner_ttl_ms))

    async def claim(self, predecessors: Iterable[str]) -> None:
        """At start-up: declare ``predecessors`` (this data dir's dead processes) dead and take this
        process's owner key, before any request. A Redis outage is not fatal here (requests fail
        meanwhile anyway, readiness says so, and ``keep_alive`` retries)."""
        try:
            await self.forget_owners(predecessors)
            await self.heartbeat()
        except IdempotencyUnavailable:
            pass

    async def keep_alive(self) -> None:
        """Until cancelled: refresh the owner key every third of its TTL."""
        while True:
            await asyncio.sleep(self._owner_ttl_ms / 3000)
            with contextlib.suppress(IdempotencyUnavailable):
                await self.heartbeat()

    async def forget_owners(self, owners: Iterable[str]) -> None:
        """Declare these owners dead (e.g. earlier processes on this data dir): their entries are free."""
        for owner in owners:
            await self._command(self._client.delete(self.owner_key(owner)))

    async def retire(self) -> None:
        """This process stops: its owner key goes (nothing of it is in flight after the drain)."""
        with contextlib.suppress(IdempotencyUnavailable):
            await self.forget_owners([self.owner])

    async def begin(
        self, namespace: str, key: str, fingerprint: str, now: Instant, deadline: Instant | None = None
    ) -> Begin:
        token = self._new_token()
        now_ms = to_ms(now)
        until_ms = lease_until_ms(now_ms, self._lease_ms, deadline)
        name = self.redis_key(namespace, key)
        args = (compact(fingerprint), token, now_ms, until_ms, until_ms - now_ms, self.owner)
        result = await self._run(self._begin, name, *args)
        wait_ms = None
        if result[0] in _OUTCOMES and result[1] and result[1].decode() != self.owner:
            # Held by another process: is it still alive? If its owner key is gone, take the entry over.
            owner = result[1].decode()
            owner_ms = await self._command(self._client.pttl(self.owner_key(owner)))
            if owner_ms == -2:
                result = await self._run(self._begin, name, *args, owner)
            else:
                wait_ms = owner_ms if owner_ms > 0 else None
        outcome = result[0]
        if outcome == b"proceed":
            return Proceed(token)
        if outcome == b"replay":
            try:
                return Replay(decode_reply(result[1]))
            except ValueError as exc:
                raise IdempotencyUnavailable(f"unreadable stored reply: {exc}") from exc
        if outcome == b"in_progress":
            remaining_ms = int(result[2]) - now_ms
            if wait_ms is not None:
                remaining_ms = min(remaining_ms, wait_ms)
            cap = max(IN_PROGRESS_RETRY_CAP_SECONDS, math.ceil(self._owner_ttl_ms / 1000))
            return Conflict("REQUEST_IN_PROGRESS", in_progress_retry_after(remaining_ms, cap))
        return _OUTCOMES[outcome]

    async def complete(self, namespace: str, key: str, token: str, reply: StoredReply, now: Instant) -> bool:
        until_ms = to_ms(now) + self._ttl_ms
        stored = await self._run(
            self._settle, self.redis_key(namespace, key), token, until_ms, self._ttl_ms, encode_reply(reply)
        )
        return bool(stored)

    async def release(self, namespace: str, key: str, token: str) -> bool:
        return bool(await self._run(self._settle, self.redis_key(namespace, key), token))

    @staticmethod
    async def _command(pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise IdempotencyUnavailable(f"idempotency store (Redis) failed: {type(exc).__name__}") from exc

    @staticmethod
    async def _run(script: Script, key: str, *args: str | int | bytes) -> Any:
        try:
            return await script(keys=[key], args=args)
        except (RedisError, OSError) as exc:
            raise IdempotencyUnavailable(f"idempotency store (Redis) failed: {type(exc).__name__}") from exc
