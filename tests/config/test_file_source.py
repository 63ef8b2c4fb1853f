"""The embedded default: a YAML file, hot-reloaded when it changes, rewritten by admin writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from router_impl.config.file_source import FileSource, load_file, render
from router_impl.config.model import RuntimeConfig
from router_impl.config.source import ConfigInvalid, ObjectNotFound, SourceUnavailable
from tests.config.samples import backend, model, sample_config
from tests.config.support import next_snapshot
from tests.harness.wait import eventually


def _write(path: Path, config: RuntimeConfig) -> None:
    path.write_text(render(config), encoding="utf-8")


@pytest.fixture
async def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "runtime.yaml"
    _write(path, sample_config())
    return path


@pytest.fixture
async def source(config_file: Path) -> AsyncIterator[FileSource]:
    source = FileSource(config_file, poll_interval=0.02)
    yield source
    await source.close()


async def test_an_edited_file_is_applied_without_a_restart(source: FileSource, config_file: Path) -> None:
    first = await source.snapshot()
    assert first.config == sample_config()
    changes = source.changes()
    edited = sample_config().model_copy(update={"backends": (*sample_config().backends, backend("gpu-c"))})
    _write(config_file, edited)
    snapshot = await next_snapshot(changes)
    assert snapshot.config.backend("gpu-c") is not None
    assert snapshot.revision > first.revision


async def test_a_file_replaced_by_rename_is_applied(source: FileSource, config_file: Path) -> None:
    await source.snapshot()
    changes = source.changes()
    staged = config_file.with_name("staged.yaml")
    _write(staged, RuntimeConfig(backends=(backend("only"),)))
    staged.replace(config_file)  # how ConfigMaps and editors swap files
    assert [b.id for b in (await next_snapshot(changes)).config.backends] == ["only"]


async def test_an_invalid_file_is_rejected_and_the_last_good_snapshot_stays(
    source: FileSource, config_file: Path
) -> None:
    await source.snapshot()
    changes = source.changes()
    pending = asyncio.ensure_future(anext(changes))
    config_file.write_text("models:\n  - model: m\n    backends: [{backend_id: nowhere}]\n")
    await eventually(lambda: source.rejected == 1)
    assert source.problem is not None and "runtime.yaml rejected" in source.problem
    config_file.write_text("backends: [ {id: broken")  # not YAML at all
    await eventually(lambda: source.rejected == 2)
    assert not pending.done()
    _write(config_file, RuntimeConfig(backends=(backend("fixed"),)))
    snapshot = await asyncio.wait_for(pending, 5)
    assert [b.id for b in snapshot.config.backends] == ["fixed"]
    assert source.problem is None


async def test_a_deleted_file_keeps_the_last_good_snapshot(source: FileSource, config_file: Path) -> None:
    await source.snapshot()
    changes = source.changes()
    pending = asyncio.ensure_future(anext(changes))
    config_file.unlink()
    await eventually(lambda: source.rejected == 1)
    assert not pending.done()
    pending.cancel()


async def test_admin_writes_rewrite_the_file_atomically_and_are_published_at_once(
    source: FileSource, config_file: Path
) -> None:
    await source.snapshot()
    changes = source.changes()
    revision = await source.put("backends", "gpu-c", backend("gpu-c"))
    snapshot = await next_snapshot(changes, within=0.5)
    assert snapshot.revision == revision and snapshot.config.backend("gpu-c") is not None
    await source.put("models", "team/coder", model("team/coder", "gpu-c"))
    await next_snapshot(changes, within=0.5)
    on_disk = load_file(config_file)
    assert on_disk.policy_for("team/coder") is not None
    assert not list(config_file.parent.glob(".*.tmp"))
    await source.delete("models", "team/coder")
    assert load_file(config_file).policy_for("team/coder") is None


async def test_an_invalid_admin_write_is_refused_and_the_file_is_untouched(
    source: FileSource, config_file: Path
) -> None:
    before = config_file.read_bytes()
    with pytest.raises(ConfigInvalid) as caught:
        await source.put("models", "m", model("m", "gpu-z"))
    assert list(caught.value.problems) == ["models/m"]
    with pytest.raises(ConfigInvalid):
        await source.delete("backends", "gpu-a")  # models still route to it
    with pytest.raises(ObjectNotFound):
        await source.delete("backends", "gpu-z")
    assert config_file.read_bytes() == before


async def test_a_missing_file_is_an_empty_config_only_when_allowed(tmp_path: Path) -> None:
    strict = FileSource(tmp_path / "absent.yaml")
    with pytest.raises(SourceUnavailable):
        await strict.snapshot()
    lenient = FileSource(tmp_path / "absent.yaml", missing_ok=True)
    assert (await lenient.snapshot()).config == RuntimeConfig()
    await lenient.put("backends", "first", backend("first"))
    document = yaml.safe_load((tmp_path / "absent.yaml").read_text())
    assert document["backends"][0]["id"] == "first"


async def test_the_rendered_file_loads_back_to_the_same_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    _write(path, sample_config())
    assert load_file(path) == sample_config()
