"""The LMDB store: safe across worker processes on one data dir, durable across reopen, swept in batches."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest

from router_impl.limits.idempotency import (
    Conflict,
    IdempotencyUnavailable,
    InFlight,
    Proceed,
    Replay,
    StoredReply,
)
from router_impl.limits.idempotency_lmdb import LmdbIdempotencyStore, decode_entry

T0 = 1_800_000_000.0
FP = "fp"
PROCESSES = 4
KEYS = [f"req-{i}" for i in range(300)]


def contend(path: str, worker: int, barrier: Barrier, results: Any) -> None:
    """One worker process: begin every key at once with the others; complete the keys it won."""
    store = LmdbIdempotencyStore(path, ttl=3600, lease=120)
    outcomes: list[tuple[str, str, bytes]] = []

    async def run() -> None:
        for key in KEYS:
            began = await store.begin("org", key, FP, T0)
            if isinstance(began, Proceed):
                outcomes.append((key, "proceed", b""))
                reply = StoredReply(200, f"worker {worker}".encode(), "text/plain")
                assert await store.complete("org", key, began.token, reply, T0)
            elif isinstance(began, Replay):
                outcomes.append((key, "replay", began.reply.body))
            else:
                outcomes.append((key, began.code, b""))

    barrier.wait()
    asyncio.run(run())
    store.close()
    results.put((worker, outcomes))


def test_worker_processes_on_one_data_dir_let_each_key_proceed_exactly_once(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(PROCESSES)
    results = spawn.Queue()
    workers = [
        spawn.Process(target=contend, args=(str(tmp_path / "idem"), n, barrier, results))
        for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    gathered = dict(results.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0

    winners: dict[str, int] = {}
    proceeded: Counter[str] = Counter()
    for worker, outcomes in gathered.items():
        for key, outcome, _ in outcomes:
            if outcome == "proceed":
                proceeded[key] += 1
                winners[key] = worker
    assert set(proceeded) == set(KEYS) and set(proceeded.values()) == {1}
    for outcomes in gathered.values():
        for key, outcome, body in outcomes:
            assert outcome in {"proceed", "replay", "REQUEST_IN_PROGRESS"}
            if outcome == "replay":
                assert body == f"worker {winners[key]}".encode()


async def test_replies_survive_closing_and_reopening_the_store(tmp_path: Path) -> None:
    store = LmdbIdempotencyStore(tmp_path, ttl=3600, lease=120)
    began = await store.begin("org", "k", FP, T0)
    assert isinstance(began, Proceed)
    assert await store.complete("org", "k", began.token, StoredReply(200, b"\xffkept", "a/b"), T0)
    store.close()
    reopened = LmdbIdempotencyStore(tmp_path, ttl=3600, lease=120)
    try:
        assert await reopened.begin("org", "k", FP, T0 + 1) == Replay(StoredReply(200, b"\xffkept", "a/b"))
    finally:
        reopened.close()


async def test_sweep_deletes_only_expired_entries_oldest_first(tmp_path: Path) -> None:
    store = LmdbIdempotencyStore(tmp_path, ttl=100, lease=10)
    try:
        done_early = await store.begin("org", "done-early", FP, T0)
        lapsing = await store.begin("org", "lapsing", FP, T0)
        done_late = await store.begin("org", "done-late", FP, T0 + 50)
        assert (
            isinstance(done_early, Proceed)
            and isinstance(lapsing, Proceed)
            and isinstance(done_late, Proceed)
        )
        assert await store.complete("org", "done-early", done_early.token, StoredReply(200, b"", ""), T0)
        assert await store.complete("org", "done-late", done_late.token, StoredReply(200, b"", ""), T0 + 50)
        assert len(store) == 3
        assert await store.sweep(T0 + 9.999) == 0
        assert await store.sweep(T0 + 10) == 1
        # A lapsed lease that was swept can no longer be completed: its holder took too long.
        assert not await store.complete("org", "lapsing", lapsing.token, StoredReply(200, b"", ""), T0 + 11)
        assert await store.sweep(T0 + 100) == 1
        assert isinstance(await store.begin("org", "done-late", FP, T0 + 100), Replay)
        assert await store.sweep(T0 + 150) == 1
        assert len(store) == 0
    finally:
        store.close()


async def test_sweep_works_through_a_backlog_in_bounded_batches(tmp_path: Path) -> None:
    store = LmdbIdempotencyStore(tmp_path, ttl=100, lease=10)
    try:
        for i in range(2500):
            began = await store.begin("org", f"k{i}", FP, T0 + i / 100)
            assert isinstance(began, Proceed)
        batches: list[int] = []
        original = store._sweep_batch

        def counting(now_ms: int, limit: int) -> int:
            removed = original(now_ms, limit)
            batches.append(removed)
            return removed

        store._sweep_batch = counting  # type: ignore[method-assign]
        assert await store.sweep(T0 + 1000, batch_size=1000) == 2500
        assert batches == [1000, 1000, 500]
        assert len(store) == 0
    finally:
        store.close()


async def test_a_full_map_is_reported_as_unavailable(tmp_path: Path) -> None:
    store = LmdbIdempotencyStore(tmp_path, ttl=100, lease=10, map_size=256 * 1024)
    try:
        began = await store.begin("org", "big", FP, T0)
        assert isinstance(began, Proceed)
        with pytest.raises(IdempotencyUnavailable):
            await store.complete("org", "big", began.token, StoredReply(200, b"x" * (1024 * 1024), ""), T0)
        assert await store.release("org", "big", began.token)  # the failed write changed nothing
    finally:
        store.close()


async def test_an_unreadable_entry_is_reported_as_unavailable(tmp_path: Path) -> None:
    LmdbIdempotencyStore(tmp_path).close()
    env = lmdb.open(str(tmp_path), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"{org}:k", b'["zz"]', db=env.open_db(b"records", txn=txn))
    env.close()
    store = LmdbIdempotencyStore(tmp_path)
    try:
        with pytest.raises(IdempotencyUnavailable, match="unreadable"):
            await store.begin("org", "k", FP, T0)
    finally:
        store.close()


def test_a_second_open_of_one_data_dir_in_a_process_is_refused(tmp_path: Path) -> None:
    first = LmdbIdempotencyStore(tmp_path)
    try:
        with pytest.raises(IdempotencyUnavailable, match="cannot open"):
            LmdbIdempotencyStore(tmp_path)
    finally:
        first.close()


def hold_until_killed(path: str, held: Any, never: Any) -> None:
    """A router worker: takes a key, then hangs mid-request until it is SIGKILLed."""
    store = LmdbIdempotencyStore(path, ttl=3600, lease=120)
    began = asyncio.run(store.begin("org", "crashed", FP, T0))
    if isinstance(began, Proceed):
        held.set()
    never.wait(60)


def test_a_killed_processs_in_flight_entry_is_free_at_once_not_after_the_lease(tmp_path: Path) -> None:
    """15.3: before, a restarted router answered 409 to the retry until the 120 s lease lapsed."""
    context = multiprocessing.get_context("spawn")
    held, never = context.Event(), context.Event()
    worker = context.Process(target=hold_until_killed, args=(str(tmp_path), held, never))
    worker.start()
    try:
        assert held.wait(30), "the worker did not take the key"
        store = LmdbIdempotencyStore(tmp_path, ttl=3600, lease=120)
        try:
            in_progress = asyncio.run(store.begin("org", "crashed", FP, T0 + 1))
            assert in_progress == Conflict("REQUEST_IN_PROGRESS")  # its owner is alive: wait
            assert in_progress.retry_after is not None and 1 <= in_progress.retry_after <= 2
            worker.kill()
            worker.join(10)
            assert isinstance(asyncio.run(store.begin("org", "crashed", FP, T0 + 2)), Proceed)
        finally:
            store.close()
    finally:
        worker.kill()
        worker.join(10)


def test_entries_written_before_owners_were_recorded_still_read(tmp_path: Path) -> None:
    old = orjson.dumps(["p", "fp", "tok", int(T0 * 1000) + 120_000])
    assert decode_entry(old) == InFlight("fp", "tok", int(T0 * 1000) + 120_000, "")
