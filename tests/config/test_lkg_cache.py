"""The LMDB last-known-good cache: the newest applied snapshot survives a restart."""

from __future__ import annotations

from pathlib import Path

import lmdb

from router_impl.config.lkg_cache import LastKnownGood
from router_impl.config.source import Versioned
from tests.config.samples import NOW, sample_config


def test_the_last_saved_snapshot_is_loaded_after_a_restart(tmp_path: Path) -> None:
    cache = LastKnownGood(tmp_path / "lkg")
    assert cache.load() is None
    cache.save(Versioned(sample_config(), 7), "etcd", NOW)
    cache.save(Versioned(sample_config(), 9), "etcd", NOW)
    cache.close()
    reopened = LastKnownGood(tmp_path / "lkg")
    cached = reopened.load()
    reopened.close()
    assert cached is not None
    assert cached.snapshot == Versioned(sample_config(), 9)
    assert (cached.source, cached.saved_at) == ("etcd", NOW)


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "lkg"), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"last_known_good", b'{"format": 1, "config": "garbage"}')
    env.close()
    cache = LastKnownGood(tmp_path / "lkg")
    assert cache.load() is None
    cache.close()
