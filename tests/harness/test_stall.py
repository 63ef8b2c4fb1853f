"""The stall meter: run-queue wait read from /proc, and the worst window of it."""

from __future__ import annotations

import os
import threading

from tests.harness.stall import StallMeter, run_queue_wait_s, steal_s


def test_the_run_queue_wait_of_this_process_is_read_and_never_goes_back():
    seen: dict[tuple[int, str], int] = {}
    first = run_queue_wait_s([os.getpid()], seen)
    worker = threading.Thread(target=sum, args=(range(200_000),))
    worker.start()
    worker.join()  # a thread that ended between two reads: its wait still counts
    assert 0.0 <= first <= run_queue_wait_s([os.getpid()], seen)
    assert run_queue_wait_s([2**22 + 1]) == 0.0  # no such process: nothing waited


def test_a_thread_that_has_exited_keeps_counting_with_its_last_reading():
    gone = (os.getpid(), "999999999")  # no such thread now
    seen = {gone: 2_000_000_000}
    assert run_queue_wait_s([os.getpid()], seen) >= 2.0
    assert seen[gone] == 2_000_000_000


def test_worst_is_the_largest_stall_within_any_window_rounded_out_to_the_next_sample():
    meter = StallMeter([])
    meter._times = [0.0, 0.1, 0.2, 0.3, 0.4]
    meter._waits = [0.0, 0.0, 0.5, 0.5, 0.9]
    assert meter.total_s == 0.9
    assert meter.worst(0.1) == 0.5  # 0.1 -> 0.2
    assert meter.worst(0.05) == 0.5  # rounded out to the next sample: never understated
    assert meter.worst(0.15) == 0.5
    assert meter.worst(0.25) == 0.9  # 0.1 -> 0.4 (rounded out from 0.35)
    assert meter.worst(10.0) == 0.9


def test_between_is_the_stall_from_the_sample_before_to_the_sample_after():
    meter = StallMeter([])
    assert meter.between(0.0, 1.0) == 0.0  # nothing sampled
    meter._times = [0.0, 0.1, 0.2, 0.3, 0.4]
    meter._waits = [0.0, 0.0, 0.5, 0.5, 0.9]
    assert meter.between(0.12, 0.18) == 0.5  # rounded out to 0.1 -> 0.2: never understated
    assert meter.between(0.2, 0.3) == 0.0
    assert meter.between(0.25, 0.35) == 0.4
    assert meter.between(-1.0, 9.0) == 0.9


def test_a_meter_samples_while_in_its_with():
    with StallMeter([os.getpid()], interval_s=0.01) as meter:
        sum(range(500_000))
    assert len(meter._times) >= 2 and meter.total_s >= 0.0


def test_the_machines_steal_time_is_read_and_never_goes_back():
    first = steal_s()
    assert 0.0 <= first <= steal_s()


def test_a_reading_while_the_sampler_reads_proc_never_sees_a_time_without_its_wait(monkeypatch):
    """A CI run failed with IndexError in ``between``: the sampler had appended a sample's time and
    was still reading /proc for its wait. A slow read makes that moment last."""
    import tests.harness.stall as stall

    reading = threading.Event()
    release = threading.Event()

    def slow_wait(pids, seen=None):
        if threading.current_thread().name == "stall-meter":
            reading.set()
            release.wait(5)
        return 0.0

    monkeypatch.setattr(stall, "run_queue_wait_s", slow_wait)
    with StallMeter([], interval_s=0.001) as meter:
        assert reading.wait(5)  # the sampler is inside a read now
        try:
            assert meter.between(0.0, 1e12) == 0.0
            assert meter.worst(1.0) == 0.0 and meter.total_s == 0.0
        finally:
            release.set()
