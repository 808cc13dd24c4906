"""`dpstack collect`: parallel collection into a store, resume without duplicates, interrupt safety."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpstack.data.store import EpisodeStore
from dpstack.envs.collect import collect
from dpstack.errors import StoreError
from dpstack.tasks import TaskConfig

DPSTACK = str(Path(sys.executable).with_name("dpstack"))
MAZE = TaskConfig(name="pointmaze-umaze", max_steps=60)


def _seeds(store: EpisodeStore) -> list[int]:
    return [int(store.episode(i, ["seed"])["seed"][0]) for i in range(store.n_episodes)]


def test_collect_writes_whole_episodes_with_expected_keys(tmp_path: Path) -> None:
    summary = collect(MAZE, episodes=4, out=tmp_path / "m.zarr", workers=2, keep_failed=True, progress=False)
    store = EpisodeStore.open(tmp_path / "m.zarr")
    assert summary["episodes_stored"] == store.n_episodes == 4
    assert sorted(store.keys) == ["action", "goal", "reward", "seed", "state", "success"]
    assert _seeds(store) == [0, 1, 2, 3]  # in seed order, whatever the worker that ran them
    assert np.all(store.episode_lengths == 60)


def test_resume_adds_missing_episodes_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    collect(MAZE, episodes=2, out=out, keep_failed=True, progress=False)
    first = EpisodeStore.open(out).episode(1)
    collect(MAZE, episodes=5, out=out, keep_failed=True, progress=False)
    store = EpisodeStore.open(out)
    assert _seeds(store) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(store.episode(1)["state"], first["state"])
    summary = collect(MAZE, episodes=5, out=out, keep_failed=True, progress=False)
    assert summary["attempts"] == 0 and EpisodeStore.open(out).n_episodes == 5


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    collect(MAZE, episodes=1, out=out, keep_failed=True, progress=False)
    with pytest.raises(StoreError, match=r"was collected with noise=0\.0, not 0\.5"):
        collect(MAZE, episodes=2, out=out, noise=0.5, keep_failed=True, progress=False)
    multigoal = TaskConfig(name="pointmaze-umaze", max_steps=60, env={"reset_target": True})
    with pytest.raises(StoreError, match=r"was collected with env=\{\}, not \{'reset_target': True\}"):
        collect(multigoal, episodes=2, out=out, keep_failed=True, progress=False)
    assert EpisodeStore.open(out).n_episodes == 1


def test_reset_target_collects_a_walk_over_several_goals(tmp_path: Path) -> None:
    """D4RL Maze2D-style data: the env draws a new goal whenever one is reached and the expert follows it."""
    multigoal = TaskConfig(name="pointmaze-umaze", max_steps=400, env={"reset_target": True})
    collect(multigoal, episodes=1, out=tmp_path / "walk.zarr", progress=False)
    goals = EpisodeStore.open(tmp_path / "walk.zarr").read("goal")
    assert len(np.unique(goals, axis=0)) >= 3


def test_failed_episodes_are_skipped_and_remembered(tmp_path: Path) -> None:
    # 5 steps are too few to reach any goal: every episode fails and none is kept
    task = TaskConfig(name="pointmaze-umaze", max_steps=5)
    summary = collect(task, episodes=2, out=tmp_path / "f.zarr", max_attempts=3, progress=False)
    assert summary["episodes_stored"] == 0 and summary["success_rate"] == 0.0
    store = EpisodeStore.open(tmp_path / "f.zarr")
    assert store.info()["attrs"]["collect"]["failed_seeds"] == [0, 1, 2]


def test_cli_collect_interrupt_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "maze.zarr"
    args = [DPSTACK, "collect", "task=pointmaze-large", "episodes=400", f"out={out}", "progress=false", "workers=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some episodes are committed, then interrupt (Ctrl-C)
        time.sleep(0.5)
        try:
            if EpisodeStore.open(out).n_episodes >= 3:
                break
        except StoreError:  # not there yet, or caught between creating the store and writing its index
            continue
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stdout
    stored = EpisodeStore.open(out).n_episodes
    assert 3 <= stored < 400
    result = subprocess.run([*args[:3], f"episodes={stored + 2}", *args[4:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    store = EpisodeStore.open(out)
    assert _seeds(store) == list(range(stored + 2))
    info = json.loads(subprocess.run([DPSTACK, "dataset", "info", str(out)], capture_output=True, text=True).stdout)
    assert info["episodes"] == stored + 2
