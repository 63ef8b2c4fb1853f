"""The shared idempotency store on Redis: one Lua script begins, one completes or releases, atomically.

Each key is one hash, ``<prefix>{<scope>}:<key>`` (default prefix ``idem:``). The scope is the Redis Cluster
hash tag, so a script only ever touches one slot. Fields: ``s`` state (``p`` in flight, ``d`` done), ``f``
fingerprint, ``t`` holder's token, ``u`` end of lease or TTL in Unix ms, ``r`` the encoded reply. Redis's
own key expiry (the lease, then the TTL) collects entries; ``u`` lets the script judge expiry against the
caller's clock exactly as the embedded stores do. Keep these keys out of ``allkeys-*`` eviction: an
evicted reply is a retry billed twice.

The scripts run on ``scripts`` (the request path's pipelined connection, ``redis_mux``) when given,
else on the client; command timeouts are theirs. Any Redis failure surfaces as
``IdempotencyUnavailable``. The client must return bytes (``decode_responses=False``): bodies need
not be UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from router_impl.limits.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_TTL_SECONDS,
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
    new_token,
    to_ms,
)
from router_impl.redis_mux import RedisMux, Script

# KEYS[1] entry; ARGV fingerprint, token, now_ms, lease_until_ms, lease_ms
BEGIN_SCRIPT = """
local e = redis.call('HMGET', KEYS[1], 's', 'f', 'u')
if e[1] and tonumber(e[3] or '0') > tonumber(ARGV[3]) then
  if e[2] ~= ARGV[1] then return {'conflict'} end
  if e[1] == 'd' then return {'replay', redis.call('HGET', KEYS[1], 'r')} end
  return {'in_progress'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[1], 't', ARGV[2], 'u', ARGV[4])
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
redis.call('HDEL', KEYS[1], 't')
redis.call('HSET', KEYS[1], 's', 'd', 'u', ARGV[2], 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_OUTCOMES: dict[bytes, Begin] = {
    b"conflict": Conflict("IDEMPOTENCY_CONFLICT"),
    b"in_progress": Conflict("REQUEST_IN_PROGRESS"),
}


def _decodes_responses(client: Redis | RedisCluster) -> bool:
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
        scripts: RedisMux | None = None,
        token_factory: Callable[[], str] = new_token,
    ) -> None:
        if _decodes_responses(client):
            raise ValueError("RedisIdempotencyStore needs a client with decode_responses=False")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}': the scope is the hash tag")
        self._ttl_ms = duration_ms(ttl, "ttl")
        self._lease_ms = duration_ms(lease, "lease")
        self._prefix = key_prefix
        self._new_token = token_factory
        host = scripts or client
        self._begin = host.register_script(BEGIN_SCRIPT)
        self._settle = host.register_script(SETTLE_SCRIPT)

    def redis_key(self, scope: str, key: str) -> str:
        return self._prefix + entry_name(scope, key)

    async def begin(self, scope: str, key: str, fingerprint: str, now: Instant) -> Begin:
        token = self._new_token()
        now_ms = to_ms(now)
        result = await self._run(
            self._begin,
            self.redis_key(scope, key),
            compact(fingerprint),
            token,
            now_ms,
            now_ms + self._lease_ms,
            self._lease_ms,
        )
        outcome = result[0]
        if outcome == b"proceed":
            return Proceed(token)
        if outcome == b"replay":
            try:
                return Replay(decode_reply(result[1]))
            except ValueError as exc:
                raise IdempotencyUnavailable(f"unreadable stored reply: {exc}") from exc
        return _OUTCOMES[outcome]

    async def complete(self, scope: str, key: str, token: str, reply: StoredReply, now: Instant) -> bool:
        until_ms = to_ms(now) + self._ttl_ms
        stored = await self._run(
            self._settle, self.redis_key(scope, key), token, until_ms, self._ttl_ms, encode_reply(reply)
        )
        return bool(stored)

    async def release(self, scope: str, key: str, token: str) -> bool:
        return bool(await self._run(self._settle, self.redis_key(scope, key), token))

    @staticmethod
    async def _run(script: Script, key: str, *args: str | int | bytes) -> Any:
        try:
            return await script(keys=[key], args=args)
        except (RedisError, OSError) as exc:
            raise IdempotencyUnavailable(f"idempotency store (Redis) failed: {type(exc).__name__}") from exc
