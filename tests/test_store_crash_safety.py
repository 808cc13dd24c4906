"""A writer killed mid-append leaves a store that opens and holds only whole episodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpstack.data.store import EpisodeStore
from tests.conftest import make_episode
from tests.store_writer import LENGTH

ROOT = Path(__file__).resolve().parent.parent


def _writer(path: Path, episodes: int, die_at: str = "") -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.store_writer", str(path), str(episodes)]
    if die_at:
        args.append(die_at)
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _assert_whole_episodes(path: Path) -> int:
    store = EpisodeStore.open(path)
    for index in range(store.n_episodes):
        expected = make_episode(index, LENGTH + index % 3, image=True)
        got = store.episode(index)
        for key, values in expected.items():
            np.testing.assert_array_equal(got[key], values, err_msg=f"episode {index} key {key}")
    store.verify()
    return store.n_episodes


# an append makes 3 data writes (action, image, state), 1 write of meta/episode_ends, then the commit
@pytest.mark.parametrize("die_at", ["1", "2", "3", "4", "commit"])
def test_killed_at_each_write_of_an_append(tmp_path: Path, die_at: str) -> None:
    path = tmp_path / "store.zarr"
    proc = _writer(path, episodes=3, die_at=die_at)
    proc.wait(timeout=120)
    assert proc.returncode == 9
    assert _assert_whole_episodes(path) == 2  # the third episode was never committed
    # the next writer trims the uncommitted tail and appends cleanly after it
    assert _writer(path, episodes=2).wait(timeout=120) == 0
    assert _assert_whole_episodes(path) == 4


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr"
    rng = np.random.default_rng(0)
    committed = 0
    for _ in range(3):
        proc = _writer(path, episodes=10_000)
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one episode committed by this writer
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        now = _assert_whole_episodes(path)
        assert now > committed
        committed = now
