"""The config service over the file source: start-up, swaps, callbacks, the last-known-good cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_impl.config.file_source import FileSource, render
from router_impl.config.holder import ConfigHolder
from router_impl.config.lkg_cache import LastKnownGood
from router_impl.config.model import RuntimeConfig
from router_impl.config.service import ConfigService, ConfigUnavailable
from router_impl.config.source import Versioned
from tests.config.samples import NOW, backend, clock, model, sample_config
from tests.harness.wait import eventually


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "runtime.yaml"
    path.write_text(render(sample_config()))
    return path


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[LastKnownGood]:
    cache = LastKnownGood(tmp_path / "lkg")
    yield cache
    cache.close()


def _service(
    path: Path, holder: ConfigHolder, cache: LastKnownGood | None, **kwargs: object
) -> ConfigService:
    # The fixture closes the cache; the service must not close it twice.
    source = FileSource(path, poll_interval=0.02)
    return ConfigService(source, holder, cache, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_a_router_serves_the_file_and_follows_its_edits(config_file: Path, tmp_path: Path) -> None:
    holder = ConfigHolder(RuntimeConfig())
    seen: list[RuntimeConfig] = []

    async def record(config: RuntimeConfig) -> None:
        seen.append(config)

    async def broken(config: RuntimeConfig) -> None:
        raise RuntimeError("a failing callback must not stop the others")

    service = ConfigService(
        FileSource(config_file, poll_interval=0.02),
        holder,
        LastKnownGood(tmp_path / "own-lkg"),
        clock=clock,
        on_apply=[broken, record],
    )
    await service.start(within=1)
    try:
        assert holder.current() == sample_config()
        assert service.status().degraded is None and service.applied_at == NOW
        in_flight = holder.current()  # what a request already under way holds
        config_file.write_text(render(RuntimeConfig(backends=(backend("solo"),))))
        await eventually(lambda: holder.current().backend("solo") is not None)
        assert in_flight == sample_config()  # swapped, never mutated under the request
        await eventually(lambda: len(seen) == 2)
        assert seen[-1] is holder.current()
    finally:
        await service.stop()
    reopened = LastKnownGood(tmp_path / "own-lkg")
    cached = reopened.load()
    reopened.close()
    assert cached is not None and cached.snapshot.config.backend("solo") is not None


async def test_admin_writes_through_the_service_are_read_back_at_once(
    config_file: Path, cache: LastKnownGood
) -> None:
    holder = ConfigHolder(RuntimeConfig())
    service = _service(config_file, holder, None)
    await service.start(within=1)
    try:
        await service.put("models", "team/coder", model("team/coder", "gpu-a"))
        assert holder.current().policy_for("team/coder") is not None
        await service.delete("models", "team/coder")
        assert holder.current().policy_for("team/coder") is None
    finally:
        await service.stop()


async def test_a_router_starting_on_an_invalid_file_serves_the_cache_and_says_so(
    config_file: Path, cache: LastKnownGood
) -> None:
    cache.save(Versioned(RuntimeConfig(backends=(backend("cached"),)), 3), "file", NOW)
    config_file.write_text("backends: [{id: no-url}]\n")
    holder = ConfigHolder(RuntimeConfig())
    service = _service(config_file, holder, None)
    service._cache = cache  # the fixture owns it
    await service.start(within=1)
    try:
        assert holder.current().backend("cached") is not None
        status, details = await service.readiness()
        assert status == "warn"
        assert details.startswith("file config invalid; serving the last known good config from 2026-11-30")
        config_file.write_text(render(sample_config()))
        await eventually(lambda: service.degraded is None)
        assert holder.current() == sample_config()
        assert (await service.readiness())[0] == "pass"
    finally:
        service._cache = None
        await service.stop()


async def test_a_router_with_no_config_and_no_cache_refuses_to_start(tmp_path: Path) -> None:
    service = _service(tmp_path / "absent.yaml", ConfigHolder(RuntimeConfig()), None)
    with pytest.raises(ConfigUnavailable, match="file unreachable and no last known good config"):
        await service.start(within=1)


async def test_an_overlay_is_applied_to_every_snapshot(config_file: Path) -> None:
    def add_demo(config: RuntimeConfig) -> RuntimeConfig:
        if config.backend("demo") is not None:
            raise ValueError("the file already defines backend demo")
        # Built, not model_copy'd: RuntimeConfig's validator indexes backends and models.
        return RuntimeConfig(
            backends=(*config.backends, backend("demo")),
            models=config.models,
            api_keys=config.api_keys,
            backend_states=config.backend_states,
        )

    holder = ConfigHolder(RuntimeConfig())
    service = _service(config_file, holder, None, overlay=add_demo)
    await service.start(within=1)
    try:
        assert holder.current().backend("demo") is not None
        config_file.write_text(render(RuntimeConfig(backends=(backend("demo"),))))
        await eventually(lambda: service.rejected == 1)
        assert holder.current().backend("gpu-a") is not None  # the last good one stays
    finally:
        await service.stop()
