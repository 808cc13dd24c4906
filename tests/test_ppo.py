"""PPO's math against hand-computed values; Gaussian PPO learns, checkpoints, survives SIGKILL, and its
policy runs through `dpstack eval`."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpstack.data.store import EpisodeStore
from dpstack.methods import load_policy
from dpstack.policy.rl.gaussian import RunningNorm
from dpstack.policy.rl.losses import approx_kl, clip_fraction, clipped_surrogate, explained_variance, gae, value_loss
from dpstack.policy.rl.ppo import PPOConfig, train
from dpstack.policy.rollout import Rollouts, RolloutSpec
from dpstack.policy.runtime import OnnxPolicy
from dpstack.tasks import TaskConfig

DPSTACK = str(Path(sys.executable).with_name("dpstack"))


def _gae(terminated: list[bool], truncated: list[bool], final: float = 0.0) -> list[float]:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    term = torch.tensor(terminated)[:, None]
    trunc = torch.tensor(truncated)[:, None]
    finals = torch.full((3, 1), final)
    advantages, returns = gae(rewards, values, torch.tensor([0.2]), term, trunc, finals, gamma=0.9, lam=0.8)
    torch.testing.assert_close(returns, advantages + values)
    return advantages[:, 0].tolist()


def test_gae_matches_hand_computed_values() -> None:
    # deltas: 1 + .9*.4 - .5 = .86, 2 + .9*.3 - .4 = 1.87, 3 + .9*.2 - .3 = 2.88; A_t = delta_t + .72 A_{t+1}
    assert _gae([False] * 3, [False] * 3) == pytest.approx(
        [0.86 + 0.72 * (1.87 + 0.72 * 2.88), 1.87 + 0.72 * 2.88, 2.88]
    )
    # terminated at t=1: no bootstrap and no recursion across the end
    assert _gae([False, True, False], [False] * 3) == pytest.approx([0.86 + 0.72 * 1.6, 1.6, 2.88])
    # truncated at t=1: bootstrap from the final state's value (5), still no recursion across the end
    assert _gae([False] * 3, [False, True, False], final=5.0) == pytest.approx([0.86 + 0.72 * 6.1, 6.1, 2.88])


def test_ppo_losses_match_hand_computed_values() -> None:
    log_ratio = torch.log(torch.tensor([1.5, 0.5]))
    advantages = torch.tensor([1.0, -1.0])
    # min(1.5, 1.2) = 1.2 and min(-0.5, -0.8) = -0.8: loss = -(1.2 - 0.8) / 2
    assert float(clipped_surrogate(log_ratio, advantages, 0.2)) == pytest.approx(-0.2)
    assert float(clip_fraction(log_ratio, 0.2)) == 1.0
    values, old, returns = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.zeros(2)
    assert float(value_loss(values, old, returns)) == pytest.approx(0.5 * (1 + 9) / 2)
    # clipped values 1.5, 2.5 -> errors 2.25, 6.25; max with 1, 9 -> 2.25, 9
    assert float(value_loss(values, old, returns, clip=0.5)) == pytest.approx(0.5 * (2.25 + 9) / 2)
    assert float(approx_kl(torch.log(torch.tensor([2.0])))) == pytest.approx(1 - math.log(2))
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0)


def test_running_norm_matches_the_batch_statistics() -> None:
    norm = RunningNorm(2)
    data = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 0.5]) + 7.0
    for chunk in data.split(100):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean.float(), data.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.var.float(), data.var(0, unbiased=False), atol=1e-3, rtol=1e-3)


def _config(out: Path, **overrides) -> PPOConfig:
    base = dict(
        task=TaskConfig(name="hopper"), out=str(out), total_steps=16 * 512, num_envs=4, ticks=128, minibatches=8,
        checkpoint_every=4, progress=False, seed=1,
    )  # fmt: skip
    return PPOConfig(**{**base, **overrides})


def test_ppo_improves_hopper_return_and_its_policy_evaluates(tmp_path: Path) -> None:
    train(_config(tmp_path / "run"))
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == list(range(1, 17))
    first, last = history[0]["return"], sum(h["return"] for h in history[-3:]) / 3
    assert last > 2 * first, (first, last)
    assert all(0 <= h["clipfrac"] <= 1 and math.isfinite(h["approx_kl"]) for h in history)
    assert (tmp_path / "run" / "return_curve.png").stat().st_size > 0
    policy = load_policy(tmp_path / "run")
    assert type(policy).__name__ == "GaussianPolicy" and float(policy.obs_norm.count) > 8000
    eval_args = [f"checkpoint={tmp_path / 'run'}", f"out={tmp_path / 'eval'}", "episodes=2", "videos=0", "num_envs=1"]
    result = subprocess.run(
        [DPSTACK, "eval", *eval_args, "progress=false"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert record["sampler"] == "gaussian-mean" and record["nfe_per_action"] == 1.0 and "mean_return" in record
    # the same checkpoint exports to ONNX (parity checked by the command) and runs through the runtime and ROS 2
    onnx = tmp_path / "onnx"
    result = subprocess.run(
        [DPSTACK, "export", f"checkpoint={tmp_path / 'run'}", f"out={onnx}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max abs diff ")[1].split()[0]) <= 1e-4
    loop_args = [
        f"model={onnx}",
        "task=hopper",
        "task.max_steps=60",
        "episodes=1",
        "real_time_factor=0",
        f"out={tmp_path / 'loop'}",
    ]
    loop = subprocess.run([DPSTACK, "ros", "loop", *loop_args], capture_output=True, text=True, timeout=300)
    assert loop.returncode == 0, loop.stdout + loop.stderr
    over_ros = json.loads((tmp_path / "loop" / "eval.json").read_text())["per_episode"][0]
    with Rollouts(RolloutSpec(TaskConfig(name="hopper", max_steps=60), 1, 1, 1)) as rollouts:
        direct = rollouts.evaluate(OnnxPolicy(onnx), episodes=1, seed=100000)["episodes"][0]
    assert over_ros["steps"] == direct["steps"] and over_ros["score"] == pytest.approx(direct["score"], abs=1e-4)
    # the trained policy as the expert of a D4RL-style store: whole episodes, ends marked per step
    store_path = tmp_path / "medium.zarr"
    args = [f"expert={tmp_path / 'run'}", "task=hopper", f"out={store_path}", "steps=1500", "num_envs=3"]
    result = subprocess.run([DPSTACK, "collect", *args, "progress=false"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    store = EpisodeStore.open(store_path)
    assert store.n_steps >= 1500 and {"reward", "terminated", "truncated", "seed", "action", "state"} <= set(store.keys)
    ends = store.episode_ends
    for key in ("terminated", "truncated"):
        flags = store.read(key)
        assert not flags[np.setdiff1d(np.arange(store.n_steps), ends - 1)].any()  # only an episode's last step
    last = store.read("terminated")[ends - 1] | store.read("truncated")[ends - 1]
    assert last.all()  # every stored episode is whole
    assert len(set(store.read("seed")[ends - 1].tolist())) == store.n_episodes  # one seed per episode


def test_sigkill_then_resume_continues_at_the_same_iteration(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [DPSTACK, "rl", "train", "task=hopper", f"out={run}", "num_envs=2", "ticks=64", "minibatches=4",
            "checkpoint_every=1", "total_steps=1280", "seed=3"]  # fmt: skip
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = run / "checkpoints" / "latest" / "train_state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (state.exists() and json.loads(state.read_text())["iteration"] >= 2):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = json.loads(state.read_text())["iteration"]
    assert 2 <= killed_at < 10
    assert load_policy(run).cfg.method == "gaussian"  # the checkpoint left behind is whole
    resumed = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"iter {killed_at + 1}/10 " in resumed.stdout  # the first iteration after the checkpoint
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == list(range(1, 11))
    assert json.loads(state.read_text())["iteration"] == 10
    # the run's own command log: the SIGKILLed fresh start (no end line), then the resume's start and its end
    log = [json.loads(line) for line in (run / "commands.jsonl").read_text().splitlines()]
    assert [(r["event"], r.get("exit")) for r in log] == [("start", None), ("start", None), ("end", "ok")]
    assert log[0]["argv"] == ["dpstack", *args[1:]]
    assert log[1]["argv"] == log[2]["argv"] == ["dpstack", *args[1:], "resume=true"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=120)  # no resume=true: refused
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert json.loads((run / "commands.jsonl").read_text().splitlines()[-1])["exit"] == "error"


def test_a_tasks_own_ppo_settings_apply_under_the_command_line() -> None:
    from dpstack.config import load_config

    hopper = load_config("rl_train", PPOConfig, ["task=hopper", "out=x"])
    cheetah = load_config("rl_train", PPOConfig, ["task=halfcheetah", "out=x"])
    assert (hopper.activation, hopper.ticks, hopper.lr) == ("tanh", 256, 3e-4)  # no configs/ppo/hopper.yaml
    assert (cheetah.activation, cheetah.ticks, cheetah.init_log_std, cheetah.hidden) == ("relu", 64, -2.0, [256, 256])
    assert load_config("rl_train", PPOConfig, ["task=halfcheetah", "out=x", "lr=1e-3"]).lr == 1e-3  # key=value wins
    pusht = load_config("rl_train", PPOConfig, ["task=pusht", "out=x"])  # the reward DPPO's Push-T runs use
    assert (pusht.gamma, pusht.task.env["reward"]) == (0.999, "success")


def test_gaussian_policy_activation_is_an_option_and_checked() -> None:
    from dpstack.features import Feature
    from dpstack.policy.diffusion_policy import PolicyConfig
    from dpstack.policy.rl.gaussian import GaussianPolicy

    def policy(activation: str) -> GaussianPolicy:
        cfg = PolicyConfig(method="gaussian", horizon=1, n_obs_steps=1, n_action_steps=1,
                           method_kwargs={"hidden": [8], "activation": activation})  # fmt: skip
        return GaussianPolicy(cfg, {"state": Feature((3,))}, Feature((2,)))

    assert any(isinstance(m, torch.nn.ReLU) for m in policy("relu").actor.modules())
    assert any(isinstance(m, torch.nn.Tanh) for m in policy("tanh").actor.modules())
    with pytest.raises(ValueError, match="activation: 'gelu' is not one of"):
        policy("gelu")
