"""The machine's stall as the kernel counts it: how long processes sat runnable but not running.

Linux keeps, per thread, the time spent waiting on a run queue (the second field of
``/proc/<pid>/task/<tid>/schedstat``, in ns). A ``StallMeter`` samples the sum over the threads of
some processes while a load runs; ``worst(window_s)`` is the most they waited within any stretch of
that length. The machine's steal time (a virtual machine's CPUs given to other guests) is added: the
run queues cannot see it. On an idle machine it is ~0, so a latency bound of "the promised time plus the
measured stall" stays as tight as the promise; on a busy one it grows by exactly what the machine
took away, instead of by a bigger constant.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType


def run_queue_wait_s(pids: Iterable[int], seen: dict[tuple[int, str], int] | None = None) -> float:
    """Seconds the threads of ``pids`` have waited on a run queue so far.

    ``seen`` remembers each thread's last reading across calls, so a thread that has exited still
    counts with what it had waited: without it the sum goes back whenever one ends (a pytest
    worker's sum fell by 16 ms between two reads in a clean CI run)."""
    seen = {} if seen is None else seen
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                seen[(pid, tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return sum(seen.values()) / 1e9


def steal_s() -> float:
    """Seconds the hypervisor has run other guests while this machine's CPUs wanted to run (the
    ``steal`` column of /proc/stat, summed over CPUs): a stall the run queues do not show, since
    the guest's scheduler thinks its threads were running."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class StallMeter:
    """Samples ``run_queue_wait_s(pids)`` every ``interval_s`` from a thread while in its ``with``."""

    def __init__(self, pids: Iterable[int], interval_s: float = 0.05) -> None:
        self.pids = tuple(pids)
        self.interval_s = interval_s
        self._times: list[float] = []
        self._waits: list[float] = []
        self._seen: dict[tuple[int, str], int] = {}  # each thread's last reading (run_queue_wait_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="stall-meter", daemon=True)

    def __enter__(self) -> StallMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self._times.append(time.monotonic())
        self._waits.append(run_queue_wait_s(self.pids, self._seen) + steal_s())

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @property
    def total_s(self) -> float:
        """The stall over the whole measurement."""
        return self._waits[-1] - self._waits[0] if self._waits else 0.0

    def worst(self, window_s: float) -> float:
        """The largest stall within any ``window_s`` of the measurement (each window rounded out to
        the next sample, so the figure never understates)."""
        worst = 0.0
        for i, started in enumerate(self._times):
            j = min(bisect.bisect_left(self._times, started + window_s), len(self._times) - 1)
            worst = max(worst, self._waits[j] - self._waits[i])
        return worst

    def between(self, start: float, end: float) -> float:
        """The stall from ``start`` to ``end`` (monotonic), rounded out to the samples around them."""
        if not self._times:
            return 0.0
        i = max(bisect.bisect_right(self._times, start) - 1, 0)
        j = min(bisect.bisect_left(self._times, end), len(self._times) - 1)
        return self._waits[j] - self._waits[i]
