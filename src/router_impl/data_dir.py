"""The data dir holds key hashes, sealed signing secrets, stored replies, audit and usage records."""

from __future__ import annotations

from pathlib import Path

import structlog

log = structlog.get_logger("router.data_dir")


def private_data_dir(path: Path) -> None:
    """Create the data dir 0700 (tightened when found open): no other local user reads what is in it,
    whatever its files' modes (the stores create theirs 0600, their directories 0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(mode & 0o700)
        log.warning("data_dir_permissions_tightened", path=str(path), was=oct(mode), now=oct(mode & 0o700))
