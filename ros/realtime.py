"""Real-time helpers for the policy node: SCHED_FIFO for its threads, and a precise wait for a deadline.

On a robot, control threads run at a real-time priority (what ros2_control's controller manager does
too) so that ordinary processes sharing the cores cannot delay a tick. Linux grants SCHED_FIFO to root
or to a process with CAP_SYS_NICE (or an rtprio limit, `ulimit -r`); anywhere else the request is
refused, and the node says so instead of failing.
"""

from __future__ import annotations

import os
import time

SPIN_S = 0.0005  # the last half millisecond before a deadline is spun: a sleep can overshoot by ~0.1 ms


def realtime_scheduling(priority: int, thread_id: int = 0) -> str:
    """Put a thread (0: the calling one) under SCHED_FIFO at `priority`, or back to SCHED_OTHER for 0.

    Returns what happened, for logs and diagnostics: "SCHED_FIFO <priority>", "default" or "denied (<reason>)".
    """
    policy, param = (os.SCHED_FIFO, priority) if priority else (os.SCHED_OTHER, 0)
    try:
        os.sched_setscheduler(thread_id, policy, os.sched_param(param))
    except OSError as exc:  # EPERM without CAP_SYS_NICE
        return f"denied ({exc.strerror or exc}: needs root, CAP_SYS_NICE or an rtprio limit)"
    return f"SCHED_FIFO {priority}" if priority else "default"


def sleep_until(deadline: float) -> None:
    """Return at `deadline` (a time.perf_counter() value): sleep most of the way, spin the rest."""
    remaining = deadline - time.perf_counter()
    if remaining > SPIN_S:
        time.sleep(remaining - SPIN_S)
    while time.perf_counter() < deadline:
        pass
