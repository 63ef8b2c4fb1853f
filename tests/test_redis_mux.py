"""The pipelined Redis connection against a real redis-server: redis-py's replies and errors, every
answer to its own caller under concurrency, and failing fast (never hanging) when Redis is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import uvloop
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router_impl.redis_mux import RedisAddress, RedisMux
from tests.harness.services import RedisServer

pytestmark = pytest.mark.services

SCRIPT = """
local n = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
return {n, ARGV[2], false, {1, 'two'}, redis.status_reply('FINE')}
"""


@pytest.fixture
async def mux(redis_server: RedisServer) -> AsyncIterator[RedisMux]:
    # These tests are about answers, not time: the bound only catches a hang. The connect timer runs
    # while the loop schedules the 3,000 callers that wait on it, so on a busy machine (a Python 3.12
    # run at load 9) 2 s was not enough. The timeout tests below use their own Redis and bounds.
    client = RedisMux.from_url(redis_server.url, timeout=30.0)
    yield client
    await client.aclose()


def key() -> str:
    return f"mux:{uuid.uuid4().hex}"


async def test_a_script_answers_exactly_what_redis_py_answers(
    mux: RedisMux, redis_server: RedisServer
) -> None:
    reference = Redis.from_url(redis_server.url)
    try:
        k = key()
        ours = await mux.register_script(SCRIPT)(keys=[k], args=[5, "é bytes"])
        theirs = await reference.register_script(SCRIPT)(keys=[k], args=[5, "é bytes"])
    finally:
        await reference.aclose()
    assert ours == [5, "é bytes".encode(), None, [1, b"two"], b"FINE"]
    assert theirs == [10, *ours[1:]]


async def test_every_caller_gets_its_own_answer_among_thousands_in_flight(mux: RedisMux) -> None:
    k = key()
    echoes = await asyncio.gather(*(mux.execute("ECHO", str(i)) for i in range(3000)))
    counts = await asyncio.gather(*(mux.execute("INCR", k) for _ in range(3000)))
    assert echoes == [str(i).encode() for i in range(3000)]
    assert sorted(counts) == list(range(1, 3001))


async def test_a_script_is_loaded_again_after_redis_forgets_it(mux: RedisMux) -> None:
    script = mux.register_script(SCRIPT)
    k = key()
    assert (await script(keys=[k], args=[1, "a"]))[0] == 1
    await mux.execute("SCRIPT", "FLUSH")
    assert (await script(keys=[k], args=[1, "a"]))[0] == 2
    assert await mux.execute("SCRIPT", "EXISTS", script.sha) == [1]


async def test_an_error_reply_raises_for_its_caller_only_and_the_connection_carries_on(mux: RedisMux) -> None:
    k = key()
    await mux.execute("SET", k, "text")
    outcomes = await asyncio.gather(
        mux.execute("INCR", k), mux.execute("ECHO", "fine"), return_exceptions=True
    )
    assert isinstance(outcomes[0], ResponseError)
    assert outcomes[1] == b"fine"
    with pytest.raises(ResponseError, match="boom"):
        await mux.register_script("return redis.error_reply('boom')")()
    assert await mux.execute("PING") == b"PONG"


async def test_a_stopped_redis_fails_fast_with_connection_error_and_a_restarted_one_is_reconnected(
    own_redis: RedisServer,
) -> None:
    mux = RedisMux.from_url(own_redis.url, timeout=0.5)
    try:
        assert await mux.execute("PING") == b"PONG"
        own_redis.stop()
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(RedisConnectionError):
                await mux.execute("PING")
        assert time.monotonic() - started < 1.5
        own_redis.start()
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.aclose()


async def test_a_frozen_redis_times_out_every_command_in_flight_then_recovers(own_redis: RedisServer) -> None:
    mux = RedisMux.from_url(own_redis.url, timeout=0.3)
    try:
        assert await mux.execute("PING") == b"PONG"
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(*(mux.execute("PING") for _ in range(50)), return_exceptions=True)
            elapsed = time.monotonic() - started
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert all(isinstance(o, RedisTimeoutError) for o in outcomes)
        assert isinstance(outcomes[0], OSError | RedisError)  # what the stores catch
        assert elapsed < 1.0
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.aclose()


async def test_a_cancelled_caller_leaves_the_answers_of_the_others_in_step(mux: RedisMux) -> None:
    slow = asyncio.ensure_future(mux.execute("ECHO", "cancelled"))
    others = [asyncio.ensure_future(mux.execute("ECHO", str(i))) for i in range(10)]
    slow.cancel()
    assert await asyncio.gather(*others) == [str(i).encode() for i in range(10)]
    assert await mux.execute("ECHO", "after") == b"after"


async def test_password_and_database_come_from_the_url(own_redis: RedisServer) -> None:
    admin = RedisMux.from_url(own_redis.url, timeout=1.0)
    await admin.execute("CONFIG", "SET", "requirepass", "s3cr:et")
    await admin.aclose()
    base = f"redis://:s3cr%3Aet@127.0.0.1:{own_redis.port}"
    mux = RedisMux.from_url(f"{base}/3", timeout=1.0)
    try:
        assert await mux.execute("CLIENT", "INFO") is not None
        info = (await mux.execute("CLIENT", "INFO")).decode()
        assert " db=3 " in info
        with pytest.raises(RedisConnectionError):
            await RedisMux.from_url(f"redis://:wrong@127.0.0.1:{own_redis.port}", timeout=1.0).execute("PING")
    finally:
        await mux.aclose()


def test_urls_parse_like_redis_py_does() -> None:
    assert RedisAddress.from_url("redis://h:7000/2") == RedisAddress("h", 7000, db=2)
    assert RedisAddress.from_url("rediss://u:p%40ss@h?ssl_cert_reqs=none") == RedisAddress(
        "h", 6379, username="u", password="p@ss", tls=True, verify_tls=False
    )
    assert RedisAddress.from_url("unix:///run/redis.sock?db=4") == RedisAddress(
        unix_path="/run/redis.sock", db=4
    )
    with pytest.raises(ValueError, match="scheme"):
        RedisAddress.from_url("http://h")


def test_it_runs_on_uvloop_as_the_router_does(redis_server: RedisServer) -> None:
    async def exchange() -> list[object]:
        mux = RedisMux.from_url(redis_server.url, timeout=2.0)
        try:
            k = key()
            return await asyncio.gather(
                mux.register_script(SCRIPT)(keys=[k], args=[2, "x"]), mux.execute("PING")
            )
        finally:
            await mux.aclose()

    assert uvloop.run(exchange()) == [[2, b"x", None, [1, b"two"], b"FINE"], b"PONG"]


async def _stalled_exchanges(url: str) -> list[object]:
    """Commands whose loop was busy for longer than their timeout: once after the task queued them
    (the write waits for the loop), once after the write (the answer waits, unread, in the socket)."""
    mux = RedisMux.from_url(url, timeout=0.2)
    try:
        assert await mux.execute("PING") == b"PONG"  # connected
        queued = [asyncio.ensure_future(mux.execute("ECHO", f"queued-{i}")) for i in range(20)]
        await asyncio.sleep(0)  # each has sent: its write is scheduled behind this task
        time.sleep(0.5)  # the loop is busy (a burst, a collection, a starved CPU) before writing
        outcomes = list(await asyncio.gather(*queued, return_exceptions=True))
        written = [asyncio.ensure_future(mux.execute("ECHO", f"written-{i}")) for i in range(20)]
        for _ in range(3):
            await asyncio.sleep(0)  # sent and written
        time.sleep(0.5)  # the answers arrive while the loop is busy
        outcomes += await asyncio.gather(*written, return_exceptions=True)
        return outcomes
    finally:
        await mux.aclose()


EXPECTED_STALLED = [f"queued-{i}".encode() for i in range(20)] + [f"written-{i}".encode() for i in range(20)]


async def test_a_busy_event_loop_is_not_taken_for_a_stalled_redis(redis_server: RedisServer) -> None:
    """The timeout measures Redis: a command the loop wrote late, or whose answer it read late, is
    answered, not failed (before, the first case timed out and aborted every command in flight)."""
    assert await _stalled_exchanges(redis_server.url) == EXPECTED_STALLED


def test_a_busy_uvloop_is_not_taken_for_a_stalled_redis(redis_server: RedisServer) -> None:
    """The same on uvloop, the router's loop, whose timers run in another order around its polls."""
    assert uvloop.run(_stalled_exchanges(redis_server.url)) == EXPECTED_STALLED
