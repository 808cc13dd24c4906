"""The OpenMP wait policy dpstack picks at import: spin on an idle machine, wait passively on a shared one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import dpstack


@pytest.mark.parametrize(
    ("running_elsewhere", "ranks", "expected"),
    [(0, None, "ACTIVE"), (1, None, "PASSIVE"), (3, None, "PASSIVE"), (0, "2", "PASSIVE")],
)
def test_wait_policy_follows_running_tasks_and_ranks(
    monkeypatch: pytest.MonkeyPatch, running_elsewhere: int, ranks: str | None, expected: str
) -> None:
    monkeypatch.setattr(dpstack, "_runnable_elsewhere", lambda: running_elsewhere)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    if ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert dpstack._omp_wait_policy() == expected


def test_one_thread_next_to_a_busy_process_may_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS=1 beside one busy task on 2 cores oversubscribes nothing."""
    monkeypatch.setattr(dpstack, "_runnable_elsewhere", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert dpstack._omp_wait_policy() == "ACTIVE"


def test_running_tasks_are_read_from_the_kernel() -> None:
    """A real read of /proc/loadavg: a busy child process is seen as running elsewhere."""
    if dpstack._runnable_elsewhere() is None:
        pytest.skip("no /proc/loadavg on this system")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert dpstack._runnable_elsewhere(samples=20) >= 1
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize(
    ("requested", "policy", "expected"),
    [
        (None, "PASSIVE", 1),
        (None, "passive", 1),
        (None, "ACTIVE", 2),
        (None, None, 2),
        (2, "PASSIVE", 2),
        (1, "ACTIVE", 1),
    ],
)
def test_dppo_rollouts_use_one_thread_when_openmp_workers_sleep(
    requested: int | None, policy: str | None, expected: int
) -> None:
    from dpstack.policy.rl.dppo import rollout_thread_count

    assert rollout_thread_count(requested, 2, policy) == expected
