"""One pipelined Redis connection shared by every request: the hot path's Lua scripts run here.

redis-py leases a pooled connection per command and parses its answer in Python: a limits admit
costs ~120-140 µs of client CPU at 64 concurrent requests on this machine, and a request makes
five such calls. Here every command written in the same event-loop turn goes out in one ``write``
and hiredis parses the answers as they arrive, in order: ~20 µs per admit, 0.15x
(``bench/redis_mux.py``). redis-py keeps the occasional commands (reads, scans, health).
Commands and replies keep redis-py's shapes and exceptions, so the stores' error handling stays.

A command is never retried once written: the scripts are not idempotent (a retried admit would
charge twice), so a connection lost with commands in flight fails them with ``ConnectionError``
and the next command connects afresh. A command not answered within ``timeout`` fails with
``TimeoutError`` and closes the connection (the server is stalled, or the answers would be out
of step), failing every command behind it.

The timeout measures Redis, not this process's event loop: it runs from the moment the command is
written to the socket (not from when a task queued it), and a command found overdue is failed only
if it is still unanswered after the loop has polled its sockets once more. A loop that was busy for
longer than the timeout (a burst of requests, a collection, a starved CPU) would otherwise find an
answer that had long arrived unread, abort the connection and fail every request in flight: a CI
run answered 503 to organisations whose limits fail closed that way.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
# A registered Lua script as the stores call it: ``await script(keys=[...], args=[...])``, whether
# redis-py's ``AsyncScript`` or this module's ``MuxScript``.
Script = Callable[..., Awaitable[Any]]


class ScriptHost(Protocol):
    """Where the stores register their scripts: ``RedisMux`` (one Redis) or ``ClusterMux`` (a Redis
    Cluster, ``redis_cluster_mux``)."""

    def register_script(self, source: str) -> MuxScript: ...

    async def execute_for(self, key: Arg | None, *args: Arg) -> Any: ...


# How long after finding a command overdue the deadline is checked again: the next timer run, which
# comes after the loop's next poll of its sockets (asyncio and libuv alike).
_POLL_GRACE_S = 0.001


def _pack(args: tuple[Arg, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub admits 1-tuples only
    return packed


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    verify_tls: bool = True

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path?db=N``."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        db = query.get("db", [parts.path.strip("/") if parts.scheme != "unix" else ""])[0] or "0"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            unix_path=unquote(parts.path) if parts.scheme == "unix" else None,
            db=int(db),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
            verify_tls=query.get("ssl_cert_reqs", ["required"])[0].lower() != "none",
        )


class _Connection(asyncio.Protocol):
    """A socket and the FIFO of commands written on it and not yet answered."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # written: (reply, deadline)
        self._unsent: list[tuple[bytes, asyncio.Future[Any], float]] = []  # (command, reply, timeout)
        self._overdue: asyncio.Future[Any] | None = None  # found past its deadline once; polled since
        self._flush_pending = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:  # an answer nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("Redis answered a command that was not sent"))
                return
            future, _ = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def send(self, packed: bytes, timeout: float) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self._unsent.append((packed, future, timeout))
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_pending = False
        unsent = self._unsent
        if not unsent or self._transport is None or self.lost is not None:
            return
        self._transport.write(b"".join([packed for packed, _, _ in unsent]))
        now = self._loop.time()  # each command's timeout runs from its write
        self._waiting.extend((future, now + timeout) for _, future, timeout in unsent)
        unsent.clear()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._waiting[0][1], self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        oldest, deadline = self._waiting[0]
        now = self._loop.time()
        if now < deadline:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
        elif oldest is not self._overdue:
            # Overdue by the clock, but the loop may not have read what arrived while it was busy:
            # look again after it has polled (a timer set now cannot run before the next poll).
            self._overdue = oldest
            self._watchdog = self._loop.call_at(now + _POLL_GRACE_S, self._check_deadline)
        else:
            self._fail(RedisTimeoutError("Redis did not answer in time"))

    def _fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        written = [future for future, _ in self._waiting]
        for future in written + [future for _, future, _ in self._unsent]:
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._unsent.clear()
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError("connection to Redis closed"))


class RedisMux:
    """Commands from every task on one connection, written together and answered in order."""

    def __init__(self, address: RedisAddress, *, timeout: float, connect_timeout: float) -> None:
        self._address = address
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float, connect_timeout: float | None = None) -> RedisMux:
        return cls(RedisAddress.from_url(url), timeout=timeout, connect_timeout=connect_timeout or timeout)

    def register_script(self, source: str) -> MuxScript:
        return MuxScript(self, source)

    async def execute_for(self, key: Arg | None, *args: Arg) -> Any:
        """``execute``: one Redis holds every key."""
        return await self.execute(*args)

    async def execute(self, *args: Arg, asking: bool = False) -> Any:
        """Send one command; its reply as redis-py returns it with ``decode_responses=False``.
        ``asking``: preceded by ASKING on the same connection (a Redis Cluster slot in migration)."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        if asking:  # written right before the command: nothing can come between them
            connection.send(_pack(("ASKING",)), self._timeout).add_done_callback(_retrieved)
        reply = await connection.send(_pack(args), self._timeout)
        if isinstance(reply, ResponseError):
            raise NoScriptError(str(reply)) if str(reply).startswith("NOSCRIPT") else reply
        return reply

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                connection = await asyncio.wait_for(self._open(), self._connect_timeout)
            except (TimeoutError, OSError, ResponseError) as exc:
                error = RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}: {exc}")
                self._connecting.set_exception(error)
                self._connecting.exception()  # retrieved: waiters may be none
                self._connecting = None
                raise error from exc
            self._connection = connection
            self._connecting.set_result(connection)
            self._connecting = None
            return connection
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self._address
        if address.unix_path is not None:
            _, connection = await loop.create_unix_connection(lambda: _Connection(loop), address.unix_path)
        else:
            context = None
            if address.tls:
                context = ssl.create_default_context()
                if not address.verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            _, connection = await loop.create_connection(
                lambda: _Connection(loop), address.host, address.port, ssl=context
            )
        handshake: list[asyncio.Future[Any]] = []
        if address.password is not None:
            credentials = (address.username, address.password) if address.username else (address.password,)
            handshake.append(connection.send(_pack(("AUTH", *credentials)), self._timeout))
        if address.db:
            handshake.append(connection.send(_pack(("SELECT", address.db)), self._timeout))
        try:
            for reply in await asyncio.gather(*handshake):
                if isinstance(reply, ResponseError):
                    raise reply
        except BaseException:
            connection.close()
            raise
        return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # its command's own future reports the failure


class MuxScript:
    """A Lua script run by its SHA, loaded on first use and again after a SCRIPT FLUSH or restart.

    Called like redis-py's ``AsyncScript``: ``await script(keys=[...], args=[...])``.
    """

    def __init__(self, mux: ScriptHost, source: str) -> None:
        self._mux = mux
        self._source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        key = keys[0] if keys else None  # a Redis Cluster runs it where this key's slot lives
        try:
            return await self._mux.execute_for(key, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs it and caches it: not sent twice, since a NOSCRIPT reply ran nothing.
            return await self._mux.execute_for(key, "EVAL", self._source, len(keys), *keys, *args)
