"""Runtime config in etcd: one key per object under a prefix; listed once, then watched from the
listing's revision + 1. A compacted or cancelled watch, or a lost connection, means re-list and
re-watch; a snapshot is published only when all of one watch response's events are applied and the
whole result is valid."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs; only its error class is used
import structlog
from etcd3aio import EtcdError, prefix_range_end
from etcd3aio._protobuf import Compare  # the public helpers build no mod-revision comparison
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService
from etcd3aio.watch import WatchService
from pydantic import BaseModel

from router_impl.config.feed import SnapshotFeed
from router_impl.config.layout import Memo, assemble, encode, object_key, references, with_change
from router_impl.config.source import (
    ConfigConflict,
    ConfigInvalid,
    ObjectKind,
    ObjectNotFound,
    SourceUnavailable,
    Versioned,
)

DEFAULT_PREFIX = "/api-router/"
_DELETE = 1  # mvccpb.Event.EventType.DELETE
_PAGE = 1000  # keys per range request: a big prefix never meets gRPC's 4 MB message cap
# Concurrent writers (keys created on several replicas at once) each win one round; a short growing
# pause between rounds lets 16 concurrent creates through (measured) within ~0.5 s.
_WRITE_ATTEMPTS = 10
_WRITE_PAUSE_S = 0.002
_WRITE_PAUSE_MAX_S = 0.1
_TXN_OPS = 100  # below etcd's default --max-txn-ops (128)
_STEADY_WATCH_S = 1.0  # a watch that lived this long resets the reconnect backoff
_LOST = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)


class EtcdSource:
    name = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        *,
        probe_interval: float = 1.0,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        log: Any = None,
    ) -> None:
        self._endpoints = list(endpoints)
        self._prefix = prefix.encode()
        self._range_end = prefix_range_end(self._prefix)
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._log = log if log is not None else structlog.get_logger("router.config.etcd")
        self._connection: tuple[Any, KVService, WatchService] | None = None  # channel, kv, watch
        self._objects: dict[str, bytes] = {}  # the raw objects as of self._revision, valid or not
        self._revision: int | None = None
        self._stale = False  # True once a watch ended: re-list before watching again
        self._memo: Memo = {}
        self._write_memo: Memo = {}  # admin writes validate against fresh listings, decoded once
        self._feed = SnapshotFeed()
        self._follower: asyncio.Task[None] | None = None
        self._lost = False
        self._invalid: tuple[int, list[str]] | None = None
        self._serving: int | None = None  # the revision of the newest valid snapshot handed out
        self.rejected = 0
        self.relists = 0

    @property
    def problem(self) -> str | None:
        if self._lost:
            return "etcd unreachable"
        if self._invalid is not None:
            revision, keys = self._invalid
            return f"etcd config at revision {revision} rejected ({', '.join(keys[:5])})"
        return None

    async def snapshot(self) -> Versioned:
        try:
            kv, _ = await self._connected()
            objects, revision = await self._list(kv)
        except _LOST as exc:
            await self._reset_client()
            raise SourceUnavailable(f"etcd unreachable ({type(exc).__name__})") from exc
        config = assemble(objects, self._memo if self._follower is None else None)
        if self._follower is None:  # the follower then watches from here
            self._objects, self._revision, self._serving = objects, revision, revision
        return Versioned(config, revision)

    def changes(self) -> AsyncIterator[Versioned]:
        """Snapshots published from this call on (the first call starts following etcd)."""
        since = self._feed.position
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="etcd-config-follower")
        return self._feed.follow(since)

    async def put(self, kind: ObjectKind, object_id: str, obj: BaseModel) -> int:
        value = encode(kind, object_id, obj)
        return await self._write(kind, object_id, value, references(kind, object_id, obj))

    async def delete(self, kind: ObjectKind, object_id: str) -> int:
        return await self._write(kind, object_id, None, ())

    async def objects(self) -> dict[str, bytes]:
        """Every object under the prefix now, valid or not (raises SourceUnavailable)."""
        try:
            kv, _ = await self._connected()
            return (await self._list(kv))[0]
        except _LOST as exc:
            raise SourceUnavailable(f"etcd unreachable ({type(exc).__name__})") from exc

    async def seed(self, objects: Mapping[str, bytes]) -> bool:
        """Write ``objects`` (in order, each prefix a valid config) only if the prefix is empty;
        False when it is not. The first transaction claims the prefix, so of several replicas seeding
        at once exactly one writes; etcd caps a transaction's operations, hence the chunks."""
        items = [(self._prefix + key.encode(), value) for key, value in objects.items()]
        empty = KVService.txn_compare_version(self._prefix, 0, range_end=self._range_end)
        try:
            kv, _ = await self._connected()
            for start in range(0, max(len(items), 1), _TXN_OPS):
                puts = [KVService.txn_op_put(k, v) for k, v in items[start : start + _TXN_OPS]]
                response = await kv.txn([empty] if start == 0 else [], puts, timeout=self._timeout)
                if start == 0 and not response.succeeded:
                    return False
        except _LOST as exc:
            raise SourceUnavailable(f"etcd unreachable ({type(exc).__name__})") from exc
        self._log.info("config_seeded", source="etcd", objects=len(items))
        return True

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await self._reset_client()

    # ------------------------------------------------------------------ writes

    async def _write(
        self, kind: ObjectKind, object_id: str, value: bytes | None, required: Iterable[str]
    ) -> int:
        """Validate against a fresh listing, then write in a transaction that fails if anything under
        the prefix changed since (or a referenced object vanished): a lost race is retried from a new
        listing, so two admins' individually valid changes can never combine into an invalid one."""
        key = object_key(kind, object_id)
        full_key = self._prefix + key.encode()
        for attempt in range(_WRITE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(_WRITE_PAUSE_S * 2**attempt, _WRITE_PAUSE_MAX_S))
            try:
                kv, _ = await self._connected()
                objects, revision = await self._list(kv)
                if value is None and key not in objects:
                    raise ObjectNotFound(key)
                assemble(with_change(objects, kind, object_id, value), self._write_memo)
                compares = [self._unchanged_since(revision)]
                compares += [
                    KVService.txn_compare_version(self._prefix + ref.encode(), 0, result=Compare.GREATER)
                    for ref in required
                ]
                operation = (
                    KVService.txn_op_delete(full_key)
                    if value is None
                    else KVService.txn_op_put(full_key, value)
                )
                response = await kv.txn(compares, [operation], timeout=self._timeout)
            except _LOST as exc:
                raise SourceUnavailable(f"etcd unreachable ({type(exc).__name__})") from exc
            if response.succeeded:
                written = int(response.header.revision)
                self._log.info("config_object_written", key=key, revision=written, deleted=value is None)
                return written
        raise ConfigConflict(f"{key}: concurrent changes under the prefix; try again")

    def _unchanged_since(self, revision: int) -> Any:
        """True when no key under the prefix was created or modified after ``revision``."""
        return Compare(
            result=Compare.LESS,
            target=Compare.MOD,
            key=self._prefix,
            range_end=self._range_end,
            mod_revision=revision + 1,
        )

    # ------------------------------------------------------------------ follow

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._min_backoff
        while True:
            began = loop.time()
            try:
                kv, watch = await self._connected()
                if self._revision is None or self._stale:
                    await self._relist(kv)
                # Whatever ends this watch (compaction, cancellation, a lost stream), the next
                # one starts from a fresh listing.
                self._stale = True
                await self._watch_until_broken(kv, watch)
            except _LOST as exc:
                if not self._lost:  # once per outage, not once per retry
                    self._log.warning("config_source_lost", source="etcd", error=type(exc).__name__)
                self._lost = True
                await self._reset_client()
            except Exception:
                self._log.exception("config_follow_failed", source="etcd")
                await self._reset_client()
            if loop.time() - began >= _STEADY_WATCH_S:
                backoff = self._min_backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _relist(self, kv: KVService) -> None:
        objects, revision = await self._list(kv)
        if self._lost:
            self._log.info("config_source_restored", source="etcd", revision=revision)
        self._lost = False
        self.relists += 1
        first, changed = self._revision is None, objects != self._objects
        self._objects, self._revision = objects, revision
        if first or changed:
            self._publish_if_valid()

    async def _watch_until_broken(self, kv: KVService, watch: WatchService) -> None:
        """Follow the watch while probing the connection; return when a re-list is due."""
        tasks = [asyncio.create_task(self._consume(watch)), asyncio.create_task(self._probe(kv))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    async def _consume(self, watch: WatchService) -> None:
        assert self._revision is not None
        stream = watch.watch(self._prefix, self._range_end, start_revision=self._revision + 1)
        creations = 0
        try:
            async for response in stream:
                if response.created:
                    creations += 1
                    if creations > 1:
                        # etcd3aio re-created the watch after a lost stream, from a revision that can
                        # skip events; a fresh listing is exact.
                        self._log.info("config_watch_reconnected", source="etcd")
                        return
                if response.canceled or response.compact_revision:
                    self._log.info(
                        "config_watch_cancelled",
                        source="etcd",
                        compact_revision=int(response.compact_revision),
                        reason=str(response.cancel_reason),
                    )
                    return
                if response.events:
                    self._apply(response.events)
        finally:
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()

    async def _probe(self, kv: KVService) -> None:
        """A watch stream can wait silently on a dead connection; a cheap read notices at once."""
        while True:
            await asyncio.sleep(self._probe_interval)
            await kv.get(self._prefix, timeout=self._timeout)

    def _apply(self, events: Iterable[Any]) -> None:
        assert self._revision is not None
        newest = self._revision
        for event in events:
            revision = int(event.kv.mod_revision)
            if revision <= self._revision:
                continue  # already in the listing
            key = self._relative(event.kv.key)
            if event.type == _DELETE:
                self._objects.pop(key, None)
            else:
                self._objects[key] = bytes(event.kv.value)
            newest = max(newest, revision)
        if newest > self._revision:
            self._revision = newest
            self._publish_if_valid()

    def _publish_if_valid(self) -> None:
        assert self._revision is not None
        try:
            config = assemble(self._objects, self._memo)
        except ConfigInvalid as exc:
            self.rejected += 1
            self._invalid = (self._revision, sorted(exc.problems))
            self._log.warning(
                "config_rejected",
                source="etcd",
                revision=self._revision,
                objects=sorted(exc.problems),
                reason=str(exc),
                serving_revision=self._serving,
            )
            return
        self._invalid, self._serving = None, self._revision
        self._feed.publish(Versioned(config, self._revision))

    # ------------------------------------------------------------------ connection

    async def _connected(self) -> tuple[KVService, WatchService]:
        """The channel is built here rather than by Etcd3Client, for two gRPC settings it cannot pass:
        a private subchannel pool (else every channel to the same address shares one connection and
        its reconnect backoff, so a fresh channel would not reconnect any sooner) and a reconnect
        backoff capped at ``max_backoff`` (gRPC's default grows to 2 minutes during an outage)."""
        if self._connection is None:
            manager = ConnectionManager(self._endpoints)
            backoff_ms = int(self._min_backoff * 1000), int(self._max_backoff * 1000)
            manager.grpc_options += [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", backoff_ms[0]),
                ("grpc.min_reconnect_backoff_ms", backoff_ms[0]),
                ("grpc.max_reconnect_backoff_ms", backoff_ms[1]),
            ]
            channel = manager.get_channel()
            watch = WatchService(
                channel,
                reconnect_backoff_seconds=self._min_backoff,
                max_reconnect_backoff_seconds=self._max_backoff,
            )
            self._connection = (channel, KVService(channel), watch)
        _, kv, watch = self._connection
        return kv, watch

    async def _reset_client(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection[0].close()

    async def _list(self, kv: KVService) -> tuple[dict[str, bytes], int]:
        """Every object under the prefix at one revision, paged."""
        objects: dict[str, bytes] = {}
        start, revision = self._prefix, 0
        while True:
            response = await kv.get(
                start, self._range_end, revision=revision, limit=_PAGE, timeout=self._timeout
            )
            if revision == 0:
                revision = int(response.header.revision)
            for item in response.kvs:
                objects[self._relative(item.key)] = bytes(item.value)
            if not response.more or not response.kvs:
                return objects, revision
            start = bytes(response.kvs[-1].key) + b"\x00"

    def _relative(self, key: bytes) -> str:
        return bytes(key)[len(self._prefix) :].decode("utf-8", errors="replace")
