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
        self._lock = threading.Lock()  # the sampler appends while the test reads: a pair at a time
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
        at = time.monotonic()
        wait = run_queue_wait_s(self.pids, self._seen) + steal_s()
        with self._lock:  # both lists grow together; a reader never sees a time without its wait
            self._times.append(at)
            self._waits.append(wait)

    def _samples(self) -> tuple[list[float], list[float]]:
        with self._lock:
            return list(self._times), list(self._waits)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @property
    def total_s(self) -> float:
        """The stall over the whole measurement."""
        _, waits = self._samples()
        return waits[-1] - waits[0] if waits else 0.0

    def worst(self, window_s: float) -> float:
        """The largest stall within any ``window_s`` of the measurement (each window rounded out to
        the next sample, so the figure never understates)."""
        times, waits = self._samples()
        worst = 0.0
        for i, started in enumerate(times):
            j = min(bisect.bisect_left(times, started + window_s), len(times) - 1)
            worst = max(worst, waits[j] - waits[i])
        return worst

    def between(self, start: float, end: float) -> float:
        """The stall from ``start`` to ``end`` (monotonic), rounded out to the samples around them."""
        times, waits = self._samples()
        if not times:
            return 0.0
        i = max(bisect.bisect_right(times, start) - 1, 0)
        j = min(bisect.bisect_left(times, end), len(times) - 1)
        return waits[j] - waits[i]
