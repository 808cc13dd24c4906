"""Diffusion Policy end to end on small stores: loss, checkpoints, resume, evaluation, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpstack.envs.collect import collect
from dpstack.envs.registry import load_task_config
from dpstack.errors import ConfigError
from dpstack.methods import load_policy
from dpstack.policy.checkpoint import CheckpointError, load_optimizer_state, optimizer_state
from dpstack.policy.diffusion_policy import PolicyConfig
from dpstack.policy.evaluate import EvalSpec, evaluate_policy
from dpstack.policy.rollout import Rollouts, RolloutSpec
from dpstack.policy.samplers import make_sampler
from dpstack.train import EpochSampler, ema_decay, lr_factor, train
from tests.conftest import MAZE
from tests.conftest import train_config as _config

DPSTACK = str(Path(sys.executable).with_name("dpstack"))


def test_schedule_pieces() -> None:
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert ema_decay(0) == 0.0 and 0.99 < ema_decay(10_000) < 0.9999 and ema_decay(10**9) == 0.9999
    sampler = list(EpochSampler(10, seed=1, epoch=2))
    assert sorted(sampler) == list(range(10)) and list(EpochSampler(10, 1, 2, start=4)) == sampler[4:]


def test_loss_decreases_and_checkpoint_reloads_identically(maze_store: Path, tmp_path: Path) -> None:
    cfg = _config(maze_store, tmp_path / "run", steps=300, policy=PolicyConfig(denoiser="unet", preset="tiny"))
    train(cfg)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([h["loss"] for h in history[:20]]), np.mean([h["loss"] for h in history[-20:]])
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tb").iterdir())
    # a fresh process-independent reload reproduces the actions exactly
    a, b = load_policy(tmp_path / "run"), load_policy(tmp_path / "run" / "checkpoints" / "latest")
    obs = {"state": torch.randn(3, 2, 4), "goal": torch.randn(3, 2, 2)}
    noise = torch.randn(make_sampler("ddim", a.schedule, 5).noise_shape(3, 16, 2))
    for sampler in ("ddpm", "ddim"):
        s = make_sampler(sampler, a.schedule, 5)
        assert torch.equal(
            a.predict_action_chunk(obs, noise=noise[: 5 + 1], sampler=s),
            b.predict_action_chunk(obs, noise=noise[: 5 + 1], sampler=s),
        )
    chunk = a.predict_action_chunk(obs, sampler=make_sampler("ddim", a.schedule, 5))
    assert chunk.shape == (3, 8, 2)


def test_resume_continues_exactly(maze_store: Path, tmp_path: Path) -> None:
    train(_config(maze_store, tmp_path / "full", steps=60))
    train(_config(maze_store, tmp_path / "split", steps=60, stop_after=25))  # interrupted mid-epoch
    with pytest.raises(ConfigError, match="resume=true"):
        train(_config(maze_store, tmp_path / "split", steps=60))
    train(_config(maze_store, tmp_path / "split", steps=60, resume=True))
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in split] == list(range(1, 61))
    np.testing.assert_allclose([h["loss"] for h in split], [h["loss"] for h in full], rtol=1e-5)
    wa = load_policy(tmp_path / "full").state_dict()
    wb = load_policy(tmp_path / "split").state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_trained_policy_beats_random_actions(maze_store: Path, tmp_path: Path) -> None:
    train(_config(maze_store, tmp_path / "run", steps=800, batch_size=64, warmup_steps=50))
    policy = load_policy(tmp_path / "run")
    spec = EvalSpec(MAZE, episodes=8, seed=100000, out_dir=tmp_path / "eval", videos=1)
    record = evaluate_policy(policy, spec, make_sampler("ddim", policy.schedule, 10))
    rng = np.random.default_rng(0)
    with Rollouts(RolloutSpec(MAZE, num_envs=1, n_obs_steps=2, actions_per_tick=8)) as rollouts:
        random_run = rollouts.evaluate(lambda h: rng.uniform(-1, 1, (1, 8, 2)), episodes=8, seed=100000)
    random_success = np.mean([e["success"] for e in random_run["episodes"]])
    assert record["success_rate"] >= random_success + 0.25, (record["success_rate"], random_success)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for key in (
        "task",
        "sampler",
        "episodes",
        "seeds",
        "success_rate",
        "mean_score",
        "nfe_per_action",
        "tick_ms_p50",
        "tick_ms_p99",
    ):
        assert key in saved
    assert saved["seeds"] == list(range(100000, 100008)) and 10 / 8 <= saved["nfe_per_action"] < 10 / 8 * 1.2
    assert saved["videos"] and Path(saved["videos"][0]).stat().st_size > 1000


def test_wrong_observation_shape_is_a_clear_error(maze_store: Path, tmp_path: Path) -> None:
    train(_config(maze_store, tmp_path / "run", steps=5))
    policy = load_policy(tmp_path / "run")
    with pytest.raises(ValueError, match=r"observation 'state' has per-step shape \(3,\), expected \(4,\)"):
        policy.predict_action_chunk({"state": torch.zeros(1, 2, 3), "goal": torch.zeros(1, 2, 2)})
    with pytest.raises(KeyError, match=r"missing key\(s\) \['goal'\]"):
        policy.predict_action_chunk({"state": torch.zeros(1, 2, 4)})


def test_malformed_checkpoints_are_clear_errors(maze_store: Path, tmp_path: Path) -> None:
    train(_config(maze_store, tmp_path / "run", steps=5))
    latest = tmp_path / "run" / "checkpoints" / "latest"
    weights = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_policy(tmp_path / "run")
    (latest / "model.safetensors").write_bytes(weights)
    config = json.loads((latest / "config.json").read_text())
    config["policy"]["preset"] = "tiny"
    (latest / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match config\.json: .+; and \d+ more") as info:
        load_policy(tmp_path / "run")
    assert "\n" not in str(info.value)  # one line, not torch's list of every tensor
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_policy(tmp_path)


def test_cli_train_then_eval(maze_store: Path, tmp_path: Path) -> None:
    args = [
        DPSTACK,
        "train",
        "task=pointmaze-umaze",
        "task.max_steps=60",
        "policy=mlp",
        f"dataset={maze_store}",
        f"out={tmp_path / 'run'}",
        "steps=20",
        "batch_size=16",
        "eval_episodes=1",
        "progress=false",
        "threads=1",
        "num_workers=2",  # multi-process loading
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [
            DPSTACK,
            "eval",
            f"checkpoint={tmp_path / 'run'}",
            "episodes=2",
            "sampler=ddim",
            f"out={tmp_path / 'eval'}",
            "num_envs=2",
            "videos=0",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "pointmaze-umaze ddim-10: success" in result.stdout
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["episodes"] == 2
    bad = subprocess.run([DPSTACK, "train", "policy=unett", "dataset=x", "out=y"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unett" in bad.stderr


def test_image_policy_trains_and_acts(tmp_path: Path) -> None:
    task = load_task_config("pusht", ["image=true", "max_steps=40"])
    collect(task, episodes=2, out=tmp_path / "img.zarr", keep_failed=True, progress=False)
    cfg = _config(
        tmp_path / "img.zarr",
        tmp_path / "run",
        steps=3,
        batch_size=4,
        val_ratio=0.0,
        policy=PolicyConfig(denoiser="unet", preset="tiny"),
    )
    cfg.task = task
    train(cfg)
    policy = load_policy(tmp_path / "run")
    assert set(policy.obs_encoder.cameras) == {"image"}
    obs = {"image": torch.randint(0, 255, (2, 2, 96, 96, 3), dtype=torch.uint8), "agent_pos": torch.rand(2, 2, 2) * 512}
    chunk = policy.predict_action_chunk(obs, sampler=make_sampler("ddim", policy.schedule, 2))
    assert chunk.shape == (2, 8, 2) and torch.isfinite(chunk).all()


def test_cli_streaming_training_and_realtime_samplers(maze_store: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([DPSTACK, *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result

    run(
        "train",
        "task=pointmaze-umaze",
        "task.max_steps=40",
        "policy=unet-streaming",
        "policy.preset=tiny",
        f"dataset={maze_store}",
        f"out={tmp_path / 'run'}",
        "steps=20",
        "batch_size=16",
        "eval_episodes=0",
        "progress=false",
        "threads=1",
    )
    common = [f"checkpoint={tmp_path / 'run'}", "episodes=1", "num_envs=1", "videos=0", "progress=false"]
    out = run("eval", *common, f"out={tmp_path / 'stream'}").stdout  # the policy's default: streaming
    assert "streaming-15: success" in out
    out = run(
        "eval",
        *common,
        "sampler=rti",
        "sampler.first=ddim",
        "sampler.num_inference_steps=4",
        "sampler.timesteps=[1,0]",
        f"out={tmp_path / 'rti'}",
    ).stdout
    assert "rti-1,0: success" in out
    record = json.loads((tmp_path / "rti" / "eval.json").read_text())
    assert record["nfe_per_action"] == pytest.approx((4 + 2 * 39) / 40)
    out = run("eval", *common, "sampler=ddim", "latency_steps=2", f"out={tmp_path / 'latency'}").stdout
    assert json.loads((tmp_path / "latency" / "eval.json").read_text())["latency_steps"] == 2
    out = run(
        "rti",
        "calibrate",
        f"checkpoint={tmp_path / 'run'}",
        f"dataset={maze_store}",
        "windows=8",
        "first=ddim",
        f"out={tmp_path / 'cal'}",
    ).stdout
    assert "start timestep" in out and (tmp_path / "cal" / "rti_calibration.json").is_file()
    bad = subprocess.run([DPSTACK, "eval", *common, "sampler=fast", "out=x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown sampler 'fast'" in bad.stderr and "streaming" in bad.stderr
    bad = subprocess.run(
        [DPSTACK, "eval", *common, "sampler=streaming", "sampler.num_inference_steps=16", "out=x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "multiple of the number of chunks" in bad.stderr
    bad = subprocess.run([DPSTACK, "eval", *common, "latency_steps=2", "out=x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "latency_steps must be in [0, 0]" in bad.stderr  # streaming's chunk is all executed


def test_resume_keeps_the_optimizer_moments_and_takes_the_new_configs_hyperparameters() -> None:
    """`resume=true lr=...`: the run's moments and step counts come back; the learning rate (and a scheduler's
    initial_lr) are the resuming config's, not the saved ones."""
    weights = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.AdamW([weights], lr=0.1, weight_decay=0.01)
    torch.optim.lr_scheduler.LambdaLR(saved, lambda s: 1.0)  # sets initial_lr = 0.1 in the saved groups
    weights.grad = torch.tensor([1.0, -2.0, 3.0])
    saved.step()
    tensors, meta = optimizer_state(saved)
    resumed = torch.optim.AdamW([weights], lr=0.02, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda s: 1.0)
    load_optimizer_state(resumed, tensors, meta)
    group = resumed.param_groups[0]
    assert group["lr"] == 0.02 and group["initial_lr"] == 0.02 and group["weight_decay"] == 0.0
    torch.testing.assert_close(resumed.state[weights]["exp_avg"], saved.state[weights]["exp_avg"])
    assert float(resumed.state[weights]["step"]) == 1.0
