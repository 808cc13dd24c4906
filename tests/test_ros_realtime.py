"""The policy node's real-time helpers (`dpstack.ros.realtime`), on this machine's scheduler."""

from __future__ import annotations

import os
import threading
import time

from dpstack.ros.realtime import realtime_scheduling, sleep_until


def test_realtime_scheduling_grants_or_says_why_and_restores() -> None:
    result: dict[str, object] = {}

    def in_thread() -> None:  # a throwaway thread: the test runner's own scheduling is never touched
        result["granted"] = realtime_scheduling(5)
        result["policy"] = os.sched_getscheduler(0)
        result["restored"] = realtime_scheduling(0)
        result["after"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    if result["granted"] == "SCHED_FIFO 5":
        assert result["policy"] == os.SCHED_FIFO
    else:
        assert str(result["granted"]).startswith("denied (") and "CAP_SYS_NICE" in str(result["granted"])
        assert result["policy"] == os.SCHED_OTHER
    assert result["restored"] == "default" and result["after"] == os.SCHED_OTHER


def test_sleep_until_returns_at_the_deadline_not_before() -> None:
    for wait in (0.0002, 0.003, 0.02):
        deadline = time.perf_counter() + wait
        sleep_until(deadline)
        late = time.perf_counter() - deadline
        assert 0 <= late < 0.01, (wait, late)
    start = time.perf_counter()
    sleep_until(start - 1.0)  # a deadline in the past returns at once
    assert time.perf_counter() - start < 0.01
