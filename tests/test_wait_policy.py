"""The OpenMP wait policy dpstack picks at import: spin on an idle machine, wait passively on a shared one."""

from __future__ import annotations

import os

import pytest

import dpstack


@pytest.mark.parametrize(
    ("load", "ranks", "expected"),
    [(0.1, None, "ACTIVE"), (3.0, None, "PASSIVE"), (0.1, "2", "PASSIVE")],
)
def test_wait_policy_follows_load_and_ranks(
    monkeypatch: pytest.MonkeyPatch, load: float, ranks: str | None, expected: str
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    if ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert dpstack._omp_wait_policy() == expected
