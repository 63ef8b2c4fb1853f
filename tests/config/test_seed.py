"""`--config FILE` with etcd: which objects of the file the prefix lacks or holds otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_impl.config.layout import encode, explode
from router_impl.config.model import RuntimeConfig
from router_impl.config.seed import ConfigSeedRefused, differences, seed_from_file
from tests.config.samples import backend, key, model

FILE = RuntimeConfig(backends=(backend("b1"),), models=(model("m1", "b1"),), api_keys=(key("k1"),))


def test_a_prefix_holding_the_file_and_more_is_no_difference():
    held = {**explode(FILE), "keys/k2": encode("keys", "k2", key("k2"))}  # a key created at run time
    assert differences(explode(FILE), held) == []


def test_changed_and_missing_objects_are_named():
    held = explode(FILE)
    held["backends/b1"] = encode("backends", "b1", backend("b1", "http://elsewhere:9000/v1"))
    del held["keys/k1"]
    assert differences(explode(FILE), held) == ["backends/b1 (changed in etcd)", "keys/k1 (not in etcd)"]


class _Prefix:
    def __init__(self, held: dict[str, bytes]) -> None:
        self.held = held

    async def seed(self, objects):
        if self.held:
            return False
        self.held = dict(objects)
        return True

    async def objects(self):
        return dict(self.held)


async def test_an_empty_prefix_is_seeded_and_a_different_one_refuses_the_start():
    prefix = _Prefix({})
    await seed_from_file(prefix, FILE, Path("seed.yaml"), "/p/")
    assert prefix.held == explode(FILE)
    await seed_from_file(prefix, FILE, Path("seed.yaml"), "/p/")  # the same file again: fine
    other = RuntimeConfig(backends=(backend("b1", "http://elsewhere:9000/v1"),))
    with pytest.raises(ConfigSeedRefused, match=r"backends/b1 \(changed in etcd\).*router config apply"):
        await seed_from_file(prefix, other, Path("seed.yaml"), "/p/")
