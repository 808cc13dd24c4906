"""Data-parallel training with torchrun: real processes on gloo, against one process with the whole batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpstack.distributed import World, normalize_over_ranks
from dpstack.policy.checkpoint import read_tensors
from dpstack.policy.rl.losses import normalize

STEPS = 50
TOLERANCE = 1e-6  # max abs parameter difference after 50 AdamW steps: float reduction order only (measured 7e-9)


def _train_args(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "task=pointmaze-umaze", "task.max_steps=150", "policy=mlp", "policy.preset=tiny",
        f"dataset={store}", f"out={out}", f"steps={STEPS}", "batch_size=32", "warmup_steps=5",
        "eval_episodes=0", "val_every=25", "checkpoint_every=25", "progress=false", "threads=1", *extra,
    ]  # fmt: skip


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "dpstack.cli", *args]  # fmt: skip


def _both_ends(stderr: str) -> str:
    """A failed torchrun's stderr: its beginning holds the ranks' own errors, its end torchrun's summary."""
    return stderr if len(stderr) <= 6000 else f"{stderr[:3000]}\n[...]\n{stderr[-3000:]}"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors = read_tensors(run / "checkpoints" / "latest" / "train_state.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_two_ranks_equal_one_process_with_the_whole_batch(maze_store: Path, tmp_path: Path) -> None:
    single, pair = tmp_path / "single", tmp_path / "pair"
    cli = [sys.executable, "-m", "dpstack.cli"]
    done = subprocess.run([*cli, *_train_args(maze_store, single)], env=_environment(), capture_output=True, text=True)
    assert done.returncode == 0, _both_ends(done.stderr)
    done = subprocess.run(
        _torchrun(2, _train_args(maze_store, pair)), env=_environment(), capture_output=True, text=True
    )
    assert done.returncode == 0, _both_ends(done.stderr)
    a, b = _weights(single), _weights(pair)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= TOLERANCE, worst
    moved = max(
        float((a[k] - read_tensors(single / "checkpoints" / "latest" / "model.safetensors")[k[6:]]).abs().max())
        for k in a
    )
    assert moved > 10 * TOLERANCE  # the comparison is not trivial: the EMA and the weights differ this much
    # rank 0 alone wrote the run: one metrics line per step, the world size recorded
    assert len((pair / "metrics.jsonl").read_text().splitlines()) == STEPS
    assert '"world_size": 2' in (pair / "train_config.json").read_text()


def test_a_world_size_that_does_not_divide_the_batch_is_an_error(maze_store: Path, tmp_path: Path) -> None:
    args = _train_args(maze_store, tmp_path / "odd", "batch_size=33")
    done = subprocess.run(_torchrun(2, args), env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "batch_size=33 is not divisible by the world size 2" in done.stderr + done.stdout


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(")")[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_a_killed_rank_ends_the_job_naming_it_and_resume_finishes(maze_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    args = _train_args(maze_store, run, "steps=400", "checkpoint_every=20")
    job = subprocess.Popen(
        _torchrun(2, args), env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "latest" / "train_state.json").exists():
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint before the kill"
        time.sleep(0.2)
    workers = _children(job.pid)
    assert len(workers) == 2, workers
    rank1 = next(p for p in workers if "RANK=1\0" in Path(f"/proc/{p}/environ").read_text())
    os.kill(rank1, signal.SIGKILL)
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "rank: 1" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]
    checkpoint_step = read_tensors(run / "checkpoints" / "latest" / "train_state.safetensors")  # loads: valid
    assert checkpoint_step
    resumed = subprocess.run(_torchrun(2, [*args, "resume=true"]), env=_environment(), capture_output=True, text=True)
    assert resumed.returncode == 0, _both_ends(resumed.stderr)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in lines] == list(range(1, 401))


@pytest.fixture(autouse=True)
def _no_inherited_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_dppo_on_two_ranks_pools_envs_and_resumes_each_rank(weak_hopper: Path, tmp_path: Path) -> None:
    """Each rank runs its own 2 envs; the run counts both ranks' steps and episodes and checkpoints both ranks'
    noise, and a resume on two ranks continues at the next iteration."""
    run = tmp_path / "dppo"
    args = ["finetune", f"checkpoint={weak_hopper}", "task=hopper", "task.max_steps=200", f"out={run}",
            "num_envs=2", "ticks=16", "finetuned_steps=5", "minibatch_size=128", "epochs=1", "eval_every=0",
            "eval_episodes=2", "checkpoint_every=1", f"total_steps={3 * 2 * 2 * 16 * 4}", "threads=1", "seed=3"]  # fmt: skip
    first = subprocess.run(_torchrun(2, [*args[:-2], "total_steps=512", *args[-2:]]), env=_environment(),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, _both_ends(first.stderr)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 2 iterations of 2 ranks x 2 envs x 16 ticks x 4 actions (fewer where an episode ends inside a chunk)
    assert len(history) == 2 and 200 < history[0]["env_steps"] <= 256 and history[1]["env_steps"] <= 512
    state = read_tensors(run / "checkpoints" / "latest" / "train_state.safetensors")
    assert not torch.equal(state["rank0.rng.generator"], state["rank1.rng.generator"])  # own noise per rank
    assert json.loads((run / "checkpoints" / "latest" / "train_state.json").read_text())["world_size"] == 2
    resumed = subprocess.run(_torchrun(2, [*args, "resume=true"]), env=_environment(), capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, _both_ends(resumed.stderr)
    assert "iter 3/3 " in resumed.stdout
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2, 3]


def test_advantage_statistics_over_one_rank_are_the_plain_ones() -> None:
    x = torch.randn(1000, dtype=torch.float32) * 3 + 1
    torch.testing.assert_close(normalize_over_ranks(x, World()), normalize(x))
