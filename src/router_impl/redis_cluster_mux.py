"""The request path's pipelined Redis connections on a Redis Cluster: one ``RedisMux`` per master.

A command goes to the master that owns its first key's hash slot, by the slot map ``CLUSTER SLOTS``
gave; every multi-key script names keys of one slot (``{org}`` hash tags), which Redis enforces
(``CROSSSLOT``). The map is read at the first command and again after a connection fails or a
master answers ``MOVED`` (a failover or a resharding moved the slot): a ``MOVED`` or ``ASK`` reply
ran nothing, so the command is sent again where the reply points (``ASK`` preceded by ``ASKING``), at
most ``MAX_REDIRECTS`` times. A command whose connection was lost is never resent (``redis_mux``):
it fails with ``ConnectionError`` and the stores answer as for a Redis outage.

Every node is reached with the seed's credentials and TLS setting (a cluster shares them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router_impl.redis_mux import Arg, MuxScript, RedisAddress, RedisMux

MAX_REDIRECTS = 3


def _encoded(key: Arg) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def _redirect(error: ResponseError) -> tuple[str, int, str] | None:
    """``(kind, slot, "host:port")`` of a MOVED or ASK reply, else None."""
    kind, _, rest = str(error).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, node = rest.partition(" ")
    return kind, int(slot), node


class ClusterMux:
    """Commands routed by slot to one pipelined connection per master (``RedisMux``)."""

    def __init__(self, seeds: Sequence[RedisAddress], *, timeout: float, connect_timeout: float) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self._seeds = [f"{seed.host}:{seed.port}" for seed in seeds]
        self._template = seeds[0]
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._nodes: dict[str, RedisMux] = {}
        self._slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._stale = True
        self._refreshing: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    def from_urls(cls, urls: Sequence[str], *, timeout: float) -> ClusterMux:
        return cls([RedisAddress.from_url(url) for url in urls], timeout=timeout, connect_timeout=timeout)

    def register_script(self, source: str) -> MuxScript:
        return MuxScript(self, source)

    async def execute(self, *args: Arg) -> Any:
        """A command without keys: any master runs it."""
        return await self.execute_for(None, *args)

    async def execute_for(self, key: Arg | None, *args: Arg) -> Any:
        slot = key_slot(_encoded(key)) if key is not None else 0
        asking_node: str | None = None
        for _ in range(MAX_REDIRECTS + 1):
            if asking_node is None and (self._stale or self._slots[slot] is None):
                await self._refresh()
            name = asking_node or self._slots[slot]
            if name is None:
                raise RedisConnectionError(f"no Redis Cluster master serves slot {slot}")
            try:
                return await self._node(name).execute(*args, asking=asking_node is not None)
            except (RedisConnectionError, RedisTimeoutError):
                self._stale = True  # a failover may be under way: read the map again next time
                raise
            except ResponseError as exc:
                redirect = _redirect(exc)
                if redirect is None:
                    raise
                kind, moved_slot, target = redirect
                if kind == "MOVED":
                    self._slots[moved_slot] = target
                    self._stale = True
                    asking_node = None
                else:
                    asking_node = target
        raise RedisConnectionError(f"Redis Cluster redirected slot {slot} more than {MAX_REDIRECTS} times")

    async def ping(self) -> None:
        """Readiness: read the slot map again, then PING every master it names (raises when one does
        not answer, as the scripts of its slots would fail)."""
        await self._refresh()
        masters = {name for name in self._slots if name is not None}
        await asyncio.gather(*(self._node(name).execute("PING") for name in masters))

    def _node(self, name: str) -> RedisMux:
        mux = self._nodes.get(name)
        if mux is None:
            host, _, port = name.rpartition(":")
            seed = self._template
            address = RedisAddress(
                host=host,
                port=int(port),
                username=seed.username,
                password=seed.password,
                tls=seed.tls,
                verify_tls=seed.verify_tls,
            )
            mux = RedisMux(address, timeout=self._timeout, connect_timeout=self._connect_timeout)
            self._nodes[name] = mux
        return mux

    async def _refresh(self) -> None:
        """Read the slot map again (once for every command that waits on it)."""
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            await self._read_slots()
        except BaseException as exc:
            self._refreshing.set_exception(exc)
            self._refreshing.exception()  # retrieved: waiters may be none
            raise
        else:
            self._refreshing.set_result(None)
        finally:
            self._refreshing = None

    async def _read_slots(self) -> None:
        errors = []
        for name in dict.fromkeys([*self._nodes, *self._seeds]):
            try:
                reply = await self._node(name).execute("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                errors.append(f"{name}: {exc}")
                continue
            slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, master, *_ in reply:
                host = master[0].decode() if master[0] not in (b"", b"?") else name.rpartition(":")[0]
                slots[start : end + 1] = [f"{host}:{master[1]}"] * (end + 1 - start)
            self._slots = slots
            self._stale = False
            return
        raise RedisConnectionError("no Redis Cluster node answered CLUSTER SLOTS: " + "; ".join(errors)[:300])

    async def aclose(self) -> None:
        self._closed = True
        for mux in self._nodes.values():
            await mux.aclose()
        self._nodes.clear()
