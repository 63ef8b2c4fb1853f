"""Processes whose wall clock (the date) runs ahead, with libfaketime: the whole suite (`make test-date`)
or one router (a replica whose clock is skewed).

What is shifted is CLOCK_REALTIME only (``FAKETIME_DONT_FAKE_MONOTONIC=1``): a machine whose date is
wrong or a year ahead still has a monotonic clock that counts from boot, and every deadline in the
router and the harness is on that one (``time.monotonic``, asyncio). Shifting it too is not a date
change, and it broke what waits on an absolute monotonic deadline.

libfaketime works by ``LD_PRELOAD``, so it shifts the dynamically linked programs started with the
variables below: pytest, the routers, the mock backends and redis-server (so Redis's TIME, which decides
the buckets, and its key expiry move with the router's date, as on one machine whose date moved). It
cannot shift etcd (Go reads the clock through the vDSO itself) nor Tansu (a static binary); neither's
wall clock reaches what the tests check: etcd leases and elections count on its monotonic clock and the
router stores its own timestamps in values, and Kafka records carry the producer's (the router's)
CreateTime.

libfaketime 0.9.10 gets some waits wrong once only the wall clock is shifted (librdkafka's timed
waits lasted a year, ``time.sleep`` raised EINVAL, the GIL hand-off crawled, Redis deadlocked starting
up); ``faketime_fixes.c``, compiled here on first use and preloaded before libfaketime, says which and
how it fixes each.

    python -m tests.harness.clock_shift +365d -- pytest ...   # what `make test-date` runs
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_SHIM_SOURCE = Path(__file__).with_name("faketime_fixes.c")
_LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_OFFSET = re.compile(r"([+-]?\d+(?:\.\d+)?)([smhd]?)")


class ClockShiftUnavailable(RuntimeError):
    """libfaketime or a C compiler is missing (tools/install-services.sh installs libfaketime)."""


def parse_offset(text: str) -> float:
    """``+365d``, ``-2h``, ``+2s``, ``90`` (seconds) -> seconds."""
    match = _OFFSET.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a clock offset: {text!r} (e.g. +365d, -2h, +2s)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def current_offset_s() -> float:
    """How far this process's wall clock is shifted (0 when not under libfaketime)."""
    faked = os.environ.get("FAKETIME", "")
    return parse_offset(faked) if faked and "LD_PRELOAD" in os.environ else 0.0


def libfaketime() -> str:
    for pattern in _LIBFAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise ClockShiftUnavailable("libfaketime is not installed: apt-get install -y faketime")


def faketime_fixes_library() -> str:
    """The compiled shim, cached by its source's hash next to the interpreter's packages."""
    source = _SHIM_SOURCE.read_bytes()
    cache = Path(sys.prefix) / "lib" / f"faketime_fixes-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if cache.is_file():
        return str(cache)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ClockShiftUnavailable("no C compiler (cc) to build tests/harness/faketime_fixes.c")
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / cache.name
        subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(_SHIM_SOURCE)],
            check=True,
            timeout=120,
        )
        os.replace(built, cache)  # atomic: a concurrent build writes the same bytes
    return str(cache)


def shifted_env(ahead_s: float, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with a wall clock ``ahead_s`` seconds ahead of this
    process's own (so a +2 s router inside `make test-date` runs a year and 2 s ahead)."""
    env = dict(os.environ if base is None else base)
    total = current_offset_s() + ahead_s
    env["LD_PRELOAD"] = f"{faketime_fixes_library()} {libfaketime()}"
    env["FAKETIME"] = f"{total:+.3f}"  # plain seconds
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    env.pop("FAKETIME_SHARED", None)  # the faketime wrapper's shared clock; ours is a plain offset
    return env


def main(argv: Sequence[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m tests.harness.clock_shift OFFSET -- COMMAND [ARG...]")
    offset = parse_offset(argv[0])
    env = shifted_env(offset)
    print(f"clock_shift: wall clock {argv[0]} ({offset:+.0f} s), monotonic unchanged", file=sys.stderr)
    os.execvpe(argv[2], list(argv[2:]), env)


if __name__ == "__main__":
    main(sys.argv[1:])
