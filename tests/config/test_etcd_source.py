"""Runtime config in etcd, against a real etcd: load, watch, validation, compaction, restarts."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client, prefix_range_end

from router_impl.config.etcd_source import EtcdSource
from router_impl.config.holder import ConfigHolder
from router_impl.config.layout import explode, objects_of
from router_impl.config.lkg_cache import LastKnownGood
from router_impl.config.model import BackendState, RuntimeConfig
from router_impl.config.service import ConfigService
from router_impl.config.source import ConfigConflict, ConfigInvalid, ObjectNotFound
from tests.config.samples import backend, clock, model, sample_config
from tests.config.support import next_snapshot
from tests.harness.services import EtcdServer
from tests.harness.wait import eventually

pytestmark = pytest.mark.services


@pytest.fixture
def prefix() -> str:
    return f"/test-config/{uuid.uuid4().hex}/"


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Etcd3Client]:
    """A plain client: another replica, or an operator with etcdctl."""
    async with Etcd3Client([etcd_server.endpoints]) as client:
        yield client


async def _seed(client: Etcd3Client, prefix: str, config: RuntimeConfig) -> int:
    assert client.kv is not None
    revision = 0
    for key, value in explode(config).items():
        revision = (await client.kv.put(prefix + key, value)).header.revision
    return revision


async def _revision(client: Etcd3Client) -> int:
    assert client.kv is not None
    return int((await client.kv.get("/")).header.revision)


def _source(etcd_server: EtcdServer, prefix: str) -> EtcdSource:
    return EtcdSource([etcd_server.endpoints], prefix, timeout=1.0, probe_interval=0.2, max_backoff=0.5)


async def test_a_router_loads_its_config_from_an_etcd_prefix(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str
) -> None:
    revision = await _seed(etcd, prefix, sample_config())
    source = _source(etcd_server, prefix)
    try:
        snapshot = await source.snapshot()
    finally:
        await source.close()
    assert snapshot.config == sample_config()
    assert snapshot.revision >= revision


async def test_a_change_written_on_one_replica_is_applied_by_another_within_a_second(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str, tmp_path: Path
) -> None:
    await _seed(etcd, prefix, sample_config())
    writer = _source(etcd_server, prefix)
    holder = ConfigHolder(RuntimeConfig())
    replica = ConfigService(
        _source(etcd_server, prefix), holder, LastKnownGood(tmp_path / "lkg"), clock=clock
    )
    await replica.start(within=5)
    latencies: list[float] = []
    try:
        for i in range(50):
            state = BackendState(state="degraded" if i % 2 else "healthy", reason=f"change {i}")
            began = time.perf_counter()
            revision = await writer.put("backend_states", "gpu-a", state)
            assert await replica.wait_applied(revision, within=5)
            latencies.append(time.perf_counter() - began)
            assert holder.current().state_of("gpu-a").reason == f"change {i}"
    finally:
        await replica.stop()
        await writer.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]
    figures = f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    print(f"\nconfig propagation over {len(latencies)} changes: {figures}")
    assert p99 <= 1.0


async def test_invalid_objects_written_behind_the_routers_back_are_rejected_and_the_last_good_snapshot_stays(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str
) -> None:
    assert etcd.kv is not None
    await _seed(etcd, prefix, sample_config())
    source = _source(etcd_server, prefix)
    await source.snapshot()
    changes = source.changes()
    pending = asyncio.ensure_future(anext(changes))
    negative_weight = model("llama-3-8b", "gpu-a").model_dump(mode="json")
    negative_weight["backends"][0]["weight"] = -5
    bad_url = backend("gpu-b").model_dump(mode="json") | {"base_url": "not a url"}
    writes = [
        ("models/llama-3-8b", negative_weight),
        ("models/new", model("new", "gpu-missing").model_dump(mode="json")),
        ("backends/gpu-b", bad_url),
    ]
    try:
        for count, (key, document) in enumerate(writes, start=1):
            await etcd.kv.put(prefix + key, json.dumps(document))
            await eventually(lambda count=count: source.rejected == count)  # type: ignore[misc]
            assert source.problem is not None and key in source.problem
        assert not pending.done()
        # An operator repairs all three at once: one valid snapshot follows.
        await etcd.kv.txn(
            [],
            [
                etcd.kv.txn_op_put(
                    prefix + "models/llama-3-8b", model("llama-3-8b", "gpu-a").model_dump_json()
                ),
                etcd.kv.txn_op_delete(prefix + "models/new"),
                etcd.kv.txn_op_put(
                    prefix + "backends/gpu-b", backend("gpu-b", "http://fixed:1").model_dump_json()
                ),
            ],
        )
        snapshot = await asyncio.wait_for(pending, 5)
        assert snapshot.config.backend("gpu-b").base_url == "http://fixed:1"  # type: ignore[union-attr]
        assert snapshot.config.policy_for("new") is None
        assert source.problem is None and source.rejected == 3
    finally:
        pending.cancel()
        await source.close()


async def test_an_admin_write_that_would_break_the_config_is_refused_before_anything_is_written(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str
) -> None:
    await _seed(etcd, prefix, sample_config())
    source = _source(etcd_server, prefix)
    before = await _revision(etcd)
    try:
        with pytest.raises(ConfigInvalid) as caught:
            await source.put("models", "m", model("m", "gpu-z"))
        assert list(caught.value.problems) == ["models/m"]
        with pytest.raises(ConfigInvalid):
            await source.delete("backends", "gpu-a")  # models still route to it
        with pytest.raises(ObjectNotFound):
            await source.delete("keys", "key-404")
        assert await _revision(etcd) == before
        written = await source.put("models", "team/coder", model("team/coder", "gpu-b"))
        assert etcd.kv is not None
        stored = await etcd.kv.get(prefix + "models/team%2Fcoder")
        assert stored.kvs[0].mod_revision == written
    finally:
        await source.close()


async def test_a_write_that_races_a_concurrent_delete_is_checked_again(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another admin deletes gpu-b between our validation and our write: ours must not land."""
    assert etcd.kv is not None
    await _seed(etcd, prefix, RuntimeConfig(backends=(backend("gpu-a"), backend("gpu-b"))))
    source = _source(etcd_server, prefix)
    listed = source._list
    raced = False

    async def list_then_race(kv: object) -> tuple[dict[str, bytes], int]:
        nonlocal raced
        result = await listed(kv)  # type: ignore[arg-type]
        if not raced:
            raced = True
            await etcd.kv.delete(prefix + "backends/gpu-b")  # type: ignore[union-attr]
        return result

    monkeypatch.setattr(source, "_list", list_then_race)
    try:
        with pytest.raises(ConfigInvalid, match="unknown backend"):
            await source.put("models", "m", model("m", "gpu-b"))
        assert not (await etcd.kv.get(prefix + "models/m")).kvs
    finally:
        await source.close()


async def test_writes_that_keep_losing_races_end_in_a_conflict(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _seed(etcd, prefix, RuntimeConfig(backends=(backend("gpu-a"),)))
    source = _source(etcd_server, prefix)
    listed = source._list

    async def list_then_someone_writes(kv: object) -> tuple[dict[str, bytes], int]:
        result = await listed(kv)  # type: ignore[arg-type]
        await etcd.kv.put(prefix + "backends/gpu-a", backend("gpu-a").model_dump_json())  # type: ignore[union-attr]
        return result

    monkeypatch.setattr(source, "_list", list_then_someone_writes)
    try:
        with pytest.raises(ConfigConflict):
            await source.put("backends", "gpu-c", backend("gpu-c"))
    finally:
        await source.close()


async def test_a_watch_behind_a_compaction_relists_and_loses_nothing(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str
) -> None:
    assert etcd.kv is not None
    await _seed(etcd, prefix, sample_config())
    source = _source(etcd_server, prefix)
    first = await source.snapshot()
    # While this router has not watched yet, others change things and etcd compacts its history.
    await etcd.kv.put(prefix + "backends/gpu-c", backend("gpu-c").model_dump_json())
    await etcd.kv.put(prefix + "models/coder", model("coder", "gpu-c").model_dump_json())
    await etcd.kv.delete(prefix + "keys/key-2")
    compacted = (
        await etcd.kv.put(prefix + "backends/gpu-a", backend("gpu-a", "http://moved:1").model_dump_json())
    ).header.revision
    await etcd.kv.compact(compacted, physical=True)
    changes = source.changes()
    try:
        snapshot = await next_snapshot(changes)
        assert source.relists >= 1
        assert snapshot.revision >= compacted > first.revision
        config = snapshot.config
        assert config.policy_for("coder") is not None and config.backend("gpu-c") is not None
        assert [k.id for k in config.api_keys] == ["key-1"]
        assert config.backend("gpu-a").base_url == "http://moved:1"  # type: ignore[union-attr]
        # And the new watch follows later changes.
        await etcd.kv.delete(prefix + "models/coder")
        assert (await next_snapshot(changes)).config.policy_for("coder") is None
    finally:
        await source.close()


async def test_a_router_follows_changes_made_while_etcd_restarted(
    etcd_server: EtcdServer, prefix: str
) -> None:
    async with Etcd3Client([etcd_server.endpoints]) as before:
        await _seed(before, prefix, sample_config())
    source = _source(etcd_server, prefix)
    await source.snapshot()
    changes = source.changes()
    try:
        await asyncio.to_thread(etcd_server.stop)
        await eventually(lambda: source.problem == "etcd unreachable")
        await asyncio.to_thread(etcd_server.start)
        # Written at once, likely before this router has reconnected: the re-list must bring it.
        async with Etcd3Client([etcd_server.endpoints]) as operator:
            assert operator.kv is not None
            await operator.kv.put(prefix + "backends/gpu-c", backend("gpu-c").model_dump_json())
            snapshot = await next_snapshot(changes, within=10)
            assert snapshot.config.backend("gpu-c") is not None
            await eventually(lambda: source.problem is None)
            await operator.kv.put(prefix + "models/coder", model("coder", "gpu-c").model_dump_json())
            assert (await next_snapshot(changes)).config.policy_for("coder") is not None
    finally:
        await asyncio.to_thread(etcd_server.start)
        await source.close()


async def test_a_router_starting_while_etcd_is_down_serves_its_cache_then_catches_up(
    etcd_server: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with Etcd3Client([etcd_server.endpoints]) as client:
        await _seed(client, prefix, sample_config())
    first = ConfigService(
        _source(etcd_server, prefix),
        ConfigHolder(RuntimeConfig()),
        LastKnownGood(tmp_path / "lkg"),
        clock=clock,
    )
    await first.start(within=5)
    await first.stop()

    holder = ConfigHolder(RuntimeConfig())
    service = ConfigService(
        _source(etcd_server, prefix), holder, LastKnownGood(tmp_path / "lkg"), clock=clock
    )
    try:
        await asyncio.to_thread(etcd_server.stop)
        await service.start(within=1)
        assert holder.current() == sample_config()
        status, details = await service.readiness()
        assert status == "warn"
        assert details.startswith("etcd unreachable; serving the last known good config from 2026-11-30")
        await asyncio.to_thread(etcd_server.start)
        async with Etcd3Client([etcd_server.endpoints]) as operator:
            assert operator.kv is not None
            await operator.kv.put(prefix + "backends/gpu-c", backend("gpu-c").model_dump_json())
        await eventually(lambda: holder.current().backend("gpu-c") is not None, timeout=10)
        assert service.degraded is None
        assert (await service.readiness())[0] == "pass"
    finally:
        await asyncio.to_thread(etcd_server.start)
        await service.stop()


async def test_a_file_config_seeded_into_etcd_object_by_object_reads_back_the_same(
    etcd_server: EtcdServer, prefix: str
) -> None:
    source = _source(etcd_server, prefix)
    try:
        for kind, object_id, obj in objects_of(sample_config()):
            await source.put(kind, object_id, obj)  # each step is validated, and valid
        assert (await source.snapshot()).config == sample_config()
    finally:
        await source.close()


async def test_every_object_lives_under_the_prefix(
    etcd_server: EtcdServer, etcd: Etcd3Client, prefix: str
) -> None:
    source = _source(etcd_server, prefix)
    try:
        await source.put("backends", "gpu-a", backend("gpu-a"))
        await source.put("models", "a/b", model("a/b", "gpu-a"))
    finally:
        await source.close()
    assert etcd.kv is not None
    listed = await etcd.kv.get(prefix, prefix_range_end(prefix), keys_only=True)
    assert sorted(bytes(kv.key).decode() for kv in listed.kvs) == [
        prefix + "backends/gpu-a",
        prefix + "models/a%2Fb",
    ]


async def test_seeding_writes_only_an_empty_prefix_in_chunks_below_the_transaction_cap(etcd_server, prefix):
    many = RuntimeConfig(backends=tuple(backend(f"b{i}") for i in range(150)), models=(model("m", "b0"),))
    source = _source(etcd_server, prefix)
    try:
        assert await source.seed(explode(many)) is True
        assert await source.objects() == explode(many)
        assert explode((await source.snapshot()).config) == explode(many)  # valid, in key order
        assert await source.seed(explode(sample_config())) is False  # taken: nothing written
        assert await source.objects() == explode(many)
    finally:
        await source.close()
