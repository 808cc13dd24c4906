"""DPPO: its math against hand-computed values, the chain's log-likelihood against a direct Normal,
gradients only in the fine-tuned steps, refusals, a short fine-tune that raises a tiny policy's return,
and the fine-tuned checkpoint through eval, ONNX export and the runtime; SIGKILL + resume."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dpstack.data.store import EpisodeStore
from dpstack.errors import ConfigError
from dpstack.methods import load_policy
from dpstack.policy.denoisers.finetuned import FinetunedDenoiser
from dpstack.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from dpstack.policy.rl.chain import ChainOptions, DenoisingChain
from dpstack.policy.rl.dppo import DPPOConfig, finetune, prepare
from dpstack.policy.rl.losses import chain_log_prob, clip_coefficients, denoising_discount, peak_log_density
from dpstack.policy.runtime import OnnxPolicy
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler
from dpstack.train import TrainConfig, train

DPSTACK = str(Path(sys.executable).with_name("dpstack"))
from tests.conftest import HOPPER  # noqa: E402


# ---------------------------------------------------------------------- the math
def test_denoising_discount_and_clip_schedule_match_hand_computed_values() -> None:
    steps = torch.arange(3)
    torch.testing.assert_close(denoising_discount(steps, 3, 0.9), torch.tensor([0.81, 0.9, 1.0]))
    # c(i) = base + (last - base) (e^{3 s} - 1) / (e^3 - 1), s = i / 2
    clip = clip_coefficients(steps, 3, 0.001, 0.01, rate=3.0)
    middle = 0.001 + 0.009 * (math.exp(1.5) - 1) / (math.exp(3.0) - 1)
    torch.testing.assert_close(clip, torch.tensor([0.001, middle, 0.01]))
    torch.testing.assert_close(
        clip_coefficients(torch.zeros(2, dtype=torch.long), 1, 0.001, 0.01), torch.full((2,), 0.01)
    )
    linear = torch.tensor([0.001, 0.0055, 0.01])  # rate 0: the limit, not 0 / 0
    torch.testing.assert_close(clip_coefficients(steps, 3, 0.001, 0.01, rate=0.0), linear)
    torch.testing.assert_close(clip_coefficients(steps, 3, 0.001, 0.01, rate=1e-4), linear, rtol=1e-4, atol=1e-7)


def test_chain_log_prob_is_the_clamped_normal_log_density_averaged_over_executed_actions() -> None:
    mean = torch.zeros(1, 3, 1)
    x_prev = torch.tensor([[[0.05], [1.0], [7.0]]])  # position 2 is not executed
    std = torch.tensor(0.05)  # floored to 0.1
    got = chain_log_prob(x_prev, mean, std, min_std=0.1, executed=slice(0, 2), clamp=(-5.0, 2.0))
    direct = torch.distributions.Normal(0.0, 0.1).log_prob(torch.tensor([0.05, 1.0]))  # 1.2587, -48.6
    assert float(direct[0]) == pytest.approx(-0.125 + math.log(10) - 0.5 * math.log(2 * math.pi))
    assert float(got[0]) == pytest.approx((float(direct[0]) + -5.0) / 2)
    # without clamping it is the direct density
    unclamped = chain_log_prob(x_prev, mean, torch.tensor(0.2), 0.1, slice(0, 2), clamp=(-1e9, 1e9))
    expected = torch.distributions.Normal(0.0, 0.2).log_prob(x_prev[0, :2, 0]).mean()
    assert float(unclamped[0]) == pytest.approx(float(expected), rel=1e-6)


def test_peak_log_density_is_the_normal_density_at_its_mean() -> None:
    for std in (0.01, 0.1, 0.7):
        assert peak_log_density(std) == pytest.approx(
            float(torch.distributions.Normal(0.0, std).log_prob(torch.zeros(())))
        )
    assert peak_log_density(0.1) == pytest.approx(1.3836, abs=1e-4)  # below DPPO's clamp top of 2
    assert peak_log_density(0.01) == pytest.approx(3.6862, abs=1e-4)


def _tiny_policy(k: int = 10, horizon: int = 4) -> DiffusionPolicy:
    from dpstack.features import Feature

    cfg = PolicyConfig(denoiser="mlp", preset="tiny", horizon=horizon, n_obs_steps=1, n_action_steps=3,
                       num_train_timesteps=k)  # fmt: skip
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg, {"state": Feature((3,))}, Feature((2,)))
    for key in ("state", "action"):
        dim = 3 if key == "state" else 2
        policy.normalizer.add_key(key, "minmax", torch.ones(dim), torch.zeros(dim))
    return policy


@pytest.mark.parametrize("scheduler_name", ["ddpm", "ddim"])
def test_the_recorded_chain_has_the_likelihood_of_a_direct_normal(scheduler_name: str) -> None:
    policy = _tiny_policy()
    policy.denoiser = FinetunedDenoiser(policy.denoiser, 4)
    scheduler = DDPMScheduler(policy.schedule) if scheduler_name == "ddpm" else DDIMScheduler(policy.schedule, eta=1.0)
    timesteps = scheduler.timesteps(10 if scheduler_name == "ddpm" else 5)
    k_ft = 4 if scheduler_name == "ddpm" else 2
    options = ChainOptions(logprob_clamp=(-1e9, 1e9))
    chain = DenoisingChain(policy, scheduler, timesteps, k_ft, 3, options)
    assert chain.first_finetuned_timestep == (4 if scheduler_name == "ddpm" else 3)  # ddim: 8, 6, 4, [2, 0]
    cond = torch.randn(6, 3)
    x0, recorded = chain.sample(cond, torch.Generator().manual_seed(0))
    assert recorded.shape == (6, k_ft + 1, 4, 2) and torch.equal(recorded[:, -1], x0)
    assert x0.abs().max() <= 1.0  # the final action clip
    for i in range(k_ft):
        step = torch.full((6,), i)
        got = chain.log_prob(cond, recorded, step)
        # direct: the step's Gaussian from the scheduler at that step's timesteps, std floored
        index = len(timesteps) - k_ft + i
        t = timesteps[index].expand(6)
        prev = (timesteps[index + 1] if index + 1 < len(timesteps) else torch.tensor(-1)).expand(6)
        x = recorded[:, i]
        out = scheduler.step(policy.denoiser(x, t, cond), t, prev, x, None)
        std = out.std.clamp(min=0.1).expand_as(out.mean)
        direct = torch.distributions.Normal(out.mean, std).log_prob(recorded[:, i + 1])[:, :3].mean(dim=(1, 2))
        torch.testing.assert_close(got, direct, atol=1e-5, rtol=1e-5)
        # the draws stay within the noise clip of the step's mean (the chain's indices line up)
        assert ((recorded[:, i + 1] - out.mean).abs() <= 3.0 * std + 1e-5).all()


def test_only_the_fine_tuned_steps_receive_gradients_and_route_by_timestep() -> None:
    policy = _tiny_policy()
    cfg = DPPOConfig(checkpoint="tiny", task=HOPPER, out="unused", finetuned_steps=3)
    chain = prepare(policy, cfg, None)
    denoiser = policy.denoiser
    assert isinstance(denoiser, FinetunedDenoiser) and denoiser.below == 3 and policy.cfg.finetuned_below == 3
    with torch.no_grad():
        for p in denoiser.finetuned.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, cond = torch.randn(4, 4, 2), torch.randn(4, 3)
    t = torch.tensor([0, 2, 3, 9])
    routed = denoiser(x, t, cond)
    fine, base = denoiser.finetuned(x, t, cond), denoiser.pretrained(x, t, cond)
    torch.testing.assert_close(routed[:2], fine[:2])
    torch.testing.assert_close(routed[2:], base[2:])
    assert not torch.allclose(fine, base)
    per_position = torch.tensor([[0, 1, 5, 9]] * 4)  # per-position timesteps (streaming) route entry by entry
    mixed = denoiser(x, per_position, cond)
    torch.testing.assert_close(mixed[:, :2], denoiser.finetuned(x, per_position, cond)[:, :2])
    torch.testing.assert_close(mixed[:, 2:], denoiser.pretrained(x, per_position, cond)[:, 2:])
    # the loss of every fine-tuned step reaches only the fine-tuned copy
    _, recorded = chain.sample(cond, torch.Generator().manual_seed(1))
    chain.log_prob(cond, recorded, torch.arange(4) % 3).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.finetuned.parameters())
    assert all(p.grad is None for p in denoiser.pretrained.parameters())
    assert all(p.grad is None for n, p in policy.named_parameters() if not n.startswith("denoiser.finetuned."))


def test_refusals_name_the_key(tmp_path: Path) -> None:
    policy = _tiny_policy()
    base = DPPOConfig(checkpoint="ck", task=HOPPER, out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="finetuned_steps=11 exceeds the chain's K = 10"):
        prepare(policy, replace(base, finetuned_steps=11), None)
    with pytest.raises(ConfigError, match=r"actions_per_tick=5 does not fit the checkpoint ck: .*n_action_steps <= "
                       r"horizon - n_obs_steps \+ 1, got horizon=4, n_obs_steps=1, n_action_steps=5"):  # fmt: skip
        prepare(_tiny_policy(), replace(base, actions_per_tick=5), None)
    streaming = _tiny_policy()  # a streaming window of 4 actions splits into chunks of 1, 2 or 4, not 3
    streaming.cfg = replace(streaming.cfg, n_action_steps=2, noise_mode="streaming")
    with pytest.raises(ConfigError, match=r"actions_per_tick=3 does not fit the checkpoint ck: streaming needs"):
        prepare(streaming, replace(base, actions_per_tick=3), None)
    with pytest.raises(ConfigError, match="task=hopper: the checkpoint ck was trained on task 'pusht'"):
        prepare(_tiny_policy(), base, "pusht")
    with pytest.raises(ConfigError, match="sampler: 'streaming' is not a Gaussian chain"):
        DPPOConfig(checkpoint="ck", out="x", sampler="streaming")
    with pytest.raises(ConfigError, match="eta: DDIM with eta = 0"):
        DPPOConfig(checkpoint="ck", out="x", sampler="ddim", eta=0.0)
    # a log-prob floor whose peak density is above the clamp would zero the last step's gradient
    with pytest.raises(
        ConfigError, match=r"logprob_max=2.0: with min_logprob_std=0.01 .* 3.69 .* >= 3.69 or min_logprob_std >= 0.054"
    ):
        DPPOConfig(checkpoint="ck", out="x", min_sampling_std=0.01, min_logprob_std=0.01)
    DPPOConfig(checkpoint="ck", out="x", min_sampling_std=0.01, min_logprob_std=0.01, logprob_max=4.0)
    with pytest.raises(ConfigError, match="method 'diffuser' cannot be fine-tuned"):
        planner = torch.nn.Module()
        planner.cfg = PolicyConfig(method="diffuser")
        prepare(planner, base, None)


# ---------------------------------------------------------------------- end to end on Hopper
def _finetune_config(checkpoint: Path, out: Path, **overrides) -> DPPOConfig:
    base = dict(
        checkpoint=str(checkpoint), task=HOPPER, out=str(out), num_envs=4, ticks=32, finetuned_steps=5,
        total_steps=12 * 4 * 32 * 4, epochs=4, minibatch_size=256, actor_lr=1e-3, clip_base=0.1, clip_last=0.1,
        eval_every=12, eval_episodes=8, checkpoint_every=4, threads=1, progress=False, seed=2,
    )  # fmt: skip
    return DPPOConfig(**{**base, **overrides})


def test_a_short_finetune_raises_the_return_and_the_checkpoint_runs_everywhere(
    weak_hopper: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ft"
    cfg = _finetune_config(weak_hopper, run)
    finetune(cfg, load_policy(weak_hopper), "hopper")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == list(range(1, 13))
    first, last = history[0]["return"], np.mean([h["return"] for h in history[-3:]])
    assert last > 1.3 * first, (first, last)
    assert (run / "curves.png").stat().st_size > 0 and "eval_return" in history[-1]
    # the checkpoint is an ordinary Diffusion Policy whose low timesteps run the fine-tuned weights
    tuned, pretrained = load_policy(run), load_policy(weak_hopper)
    assert tuned.cfg.finetuned_below == 5 and isinstance(tuned.denoiser, FinetunedDenoiser)
    torch.testing.assert_close(dict(tuned.denoiser.pretrained.state_dict()), dict(pretrained.denoiser.state_dict()))
    # dpstack eval on the evaluation seeds beats the pretrained policy on the same seeds
    returns = {}
    for name, checkpoint in (("pretrained", weak_hopper), ("tuned", run)):
        args = [
            f"checkpoint={checkpoint}",
            f"out={tmp_path / name}",
            "episodes=8",
            "videos=0",
            "num_envs=2",
            "progress=false",
        ]  # the checkpoints' task: hopper with 200-step episodes
        result = subprocess.run([DPSTACK, "eval", *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        returns[name] = json.loads((tmp_path / name / "eval.json").read_text())["mean_return"]
    assert returns["tuned"] > returns["pretrained"], returns
    # the evaluation during training is DPPO's protocol, which is the checkpoint's own sampler: `dpstack eval` on
    # the same seeds reproduces the last one (evaluating posterior means, the old protocol, does not)
    args = [f"checkpoint={run}", f"out={tmp_path / 'again'}", "episodes=8", "seed=200000", "num_envs=8", "videos=0",
            "progress=false", "threads=1"]  # fmt: skip
    result = subprocess.run([DPSTACK, "eval", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "again" / "eval.json").read_text())["mean_return"]
    assert again == pytest.approx(history[-1]["eval_return"], rel=1e-4), (again, history[-1]["eval_return"])
    # export (parity checked by the command) and the torch-free runtime acting like PyTorch
    onnx = tmp_path / "onnx"
    result = subprocess.run([DPSTACK, "export", f"checkpoint={run}", f"out={onnx}"], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max abs diff ")[1].split()[0]) <= 1e-4
    runtime = OnnxPolicy(onnx)
    sampler = tuned.default_sampler()
    noise = torch.randn(sampler.noise_shape(1, 4, 3), generator=torch.Generator().manual_seed(0))
    state = torch.linspace(-0.5, 0.5, 11).reshape(1, 1, 11)
    expected = tuned.sample_tick({"state": state}, sampler, None, noise)[0].numpy()
    got = runtime.tick({"state": state.numpy()}, noise.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)
    both = replace(tuned.cfg, finetuned_below=0)  # the same tick with the pretrained weights differs
    plain = DiffusionPolicy(both, tuned.obs_features, tuned.action_feature, tuned.normalizer)
    plain.denoiser.load_state_dict(tuned.denoiser.pretrained.state_dict())
    other = plain.sample_tick({"state": state}, sampler, None, noise)[0].numpy()
    assert np.abs(other - expected).max() > 1e-3


def test_critic_warmup_leaves_the_policy_unchanged_then_the_actor_learns(weak_hopper: Path, tmp_path: Path) -> None:
    """During `critic_warmup` iterations only the critic trains: the checkpoint acts exactly as the pretrained
    policy (on the same noise); the first iteration after it moves the fine-tuned steps."""
    run = tmp_path / "warmup"
    steps_per_iteration = 2 * 8 * 4
    cfg = _finetune_config(weak_hopper, run, num_envs=2, ticks=8, total_steps=2 * steps_per_iteration,
                           critic_warmup=2, eval_every=0, eval_episodes=0, checkpoint_every=1)  # fmt: skip
    finetune(cfg, load_policy(weak_hopper), "hopper")
    pretrained, warmed = load_policy(weak_hopper), load_policy(run)
    torch.testing.assert_close(dict(warmed.denoiser.finetuned.state_dict()), dict(pretrained.denoiser.state_dict()))
    sampler = warmed.make_sampler({"deterministic": True})
    noise = torch.randn(sampler.noise_shape(3, 4, 3), generator=torch.Generator().manual_seed(1))
    state = torch.linspace(-0.5, 0.5, 33).reshape(3, 1, 11)
    before = pretrained.sample_tick({"state": state}, pretrained.make_sampler({"deterministic": True}), None, noise)[0]
    torch.testing.assert_close(warmed.sample_tick({"state": state}, sampler, None, noise)[0], before)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    critic_loss = [row["value_loss"] for row in rows]
    assert len(critic_loss) == 2 and all(np.isfinite(critic_loss))
    assert not any("eval_success" in row for row in rows)  # eval_episodes=0: no evaluation, not a crash
    finetune(replace(cfg, total_steps=3 * steps_per_iteration, resume=True), load_policy(run), "hopper")
    tuned = load_policy(run)
    assert not torch.allclose(tuned.sample_tick({"state": state}, sampler, None, noise)[0], before)
    # resuming with more envs than the run saved (their running returns start at 0) goes on at iteration 4,
    # and at the resuming config's learning rate
    lr = cfg.actor_lr / 3
    finetune(replace(cfg, num_envs=3, total_steps=4 * 3 * 8 * 4, actor_lr=lr, max_grad_norm=None, resume=True),
             load_policy(run), "hopper")  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert [row["actor_lr"] for row in rows] == [cfg.actor_lr] * 3 + [lr]
    # the actor's gradient norm (before clipping; the last iteration, max_grad_norm=None, clips nothing) is logged
    # once the actor trains, not during the warm-up
    assert all(math.isnan(row["actor_grad_norm"]) for row in rows[:2])
    assert all(math.isfinite(row["actor_grad_norm"]) and row["actor_grad_norm"] > 0 for row in rows[2:])


def test_sigkill_then_resume_continues_at_the_same_iteration(weak_hopper: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [DPSTACK, "finetune", f"checkpoint={weak_hopper}", "task=hopper", "task.max_steps=200", f"out={run}",
            "num_envs=2", "ticks=16", "finetuned_steps=5", "minibatch_size=128", "epochs=1", "eval_every=0",
            "eval_episodes=2", "checkpoint_every=1", f"total_steps={8 * 2 * 16 * 4}", "threads=1", "seed=3"]  # fmt: skip
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = run / "checkpoints" / "latest" / "train_state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (state.exists() and json.loads(state.read_text())["iteration"] >= 2):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = json.loads(state.read_text())["iteration"]
    assert 2 <= killed_at < 8
    assert load_policy(run).cfg.finetuned_below == 5  # the checkpoint left behind is whole
    resumed = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"iter {killed_at + 1}/8 " in resumed.stdout
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == list(range(1, 9))


def test_a_non_finite_loss_names_the_iteration_and_keeps_the_checkpoint(weak_hopper: Path, tmp_path: Path) -> None:
    from dpstack.policy.rl.ppo import TrainingDiverged

    run = tmp_path / "nan"
    cfg = _finetune_config(weak_hopper, run, total_steps=2 * 4 * 32 * 4, checkpoint_every=1, eval_every=0,
                           eval_episodes=1, epochs=1)  # fmt: skip
    policy = load_policy(weak_hopper)
    finetune(replace(cfg, total_steps=4 * 32 * 4), policy, "hopper")  # one iteration, checkpointed
    before = (run / "checkpoints" / "latest" / "model.safetensors").read_bytes()
    resumed = load_policy(run)
    with torch.no_grad():
        next(resumed.denoiser.finetuned.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="iteration 1"):
        finetune(replace(cfg, resume=True), resumed, "hopper")
    assert (run / "checkpoints" / "latest" / "model.safetensors").read_bytes() == before


def test_the_gaussian_baseline_clones_the_store_and_ppo_starts_from_it(weak_hopper: Path, tmp_path: Path) -> None:
    from dpstack.policy.rl.ppo import PPOConfig
    from dpstack.policy.rl.ppo import train as ppo_train

    store = weak_hopper.parent / "random.zarr"
    bc = tmp_path / "bc"
    cfg = TrainConfig(task=HOPPER, policy=PolicyConfig(method="gaussian", horizon=1, n_obs_steps=1, n_action_steps=1,
                      num_train_timesteps=1, method_kwargs={"hidden": [32, 32]}), dataset=str(store), out=str(bc),
                      steps=150, batch_size=64, lr=3e-3, warmup_steps=5, eval_episodes=0, val_every=150,
                      checkpoint_every=150, progress=False, threads=1)  # fmt: skip
    train(cfg)
    cloned = load_policy(bc)
    # maximum likelihood on uniform actions in [-1, 1]: the std heads from 1 toward 1 / sqrt(3)
    assert float(cloned.log_std.detach().exp().max()) < 0.9
    # observation statistics from the store; the action range is the demonstrations' (uniform in [-1, 1])
    states = EpisodeStore.open(store).read("state")
    np.testing.assert_allclose(cloned.obs_norm.mean.numpy(), states.mean(0), rtol=1e-4, atol=1e-4)  # z-scores
    np.testing.assert_allclose(np.sqrt(cloned.obs_norm.var.numpy()), states.std(0), rtol=1e-3, atol=1e-4)
    assert np.all(cloned.action_low.numpy() > -1.0 - 1e-3) and np.all(cloned.action_low.numpy() < -0.99)
    weights = {k: v.clone() for k, v in cloned.actor.state_dict().items()}
    ppo = PPOConfig(task=HOPPER, out=str(tmp_path / "ppo"), total_steps=256, num_envs=2, ticks=128, minibatches=4,
                    epochs=1, lr=0.0, progress=False)  # fmt: skip
    ppo_train(ppo, cloned.train())
    tuned = load_policy(tmp_path / "ppo")
    assert tuned.options.hidden == [32, 32]
    for key, value in tuned.actor.state_dict().items():  # lr 0: PPO's policy is the clone
        torch.testing.assert_close(value, weights[key])


def test_a_unet_policy_fine_tunes_over_spaced_ddpm_steps(trained: Path, tmp_path: Path) -> None:
    """The U-Net of the image-free maze policy, K = 10 spaced DDPM levels of its 100, the last K' = 3 tuned,
    executing 3 of its 5 actions per chunk."""
    from tests.conftest import MAZE

    run = tmp_path / "ft"
    cfg = DPPOConfig(checkpoint=str(trained), task=MAZE, out=str(run), num_envs=2, ticks=6, num_inference_steps=10,
                     finetuned_steps=3, actions_per_tick=3, total_steps=2 * 2 * 6 * 3, minibatch_size=16, epochs=1,
                     eval_every=0, eval_episodes=1, checkpoint_every=1, threads=1, progress=False)  # fmt: skip
    finetune(cfg, load_policy(trained), MAZE.name)
    tuned = load_policy(run)
    # leading spacing over 100 levels: 90, 80, ..., 0; the last three (20, 10, 0) are fine-tuned
    assert tuned.cfg.denoiser == "unet" and tuned.denoiser.below == 21
    # its own sampler is the chain it was tuned on, so `dpstack eval` runs the tuned steps where they belong
    assert tuned.default_sampler().name == "ddpm-10"
    moved = [not torch.equal(a, b) for a, b in zip(tuned.denoiser.finetuned.parameters(),
                                                    tuned.denoiser.pretrained.parameters(), strict=True)]  # fmt: skip
    assert any(moved)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2] and "eval_return" in history[-1]
    # 3 actions per chunk: up to 2 envs x 6 ticks x 3 env steps per iteration (fewer where an episode ends
    # inside a chunk), more than 2 per chunk would give; and the checkpoint executes 3
    assert 2 * 6 * 2 < history[0]["env_steps"] <= 36 and history[1]["env_steps"] <= 72
    assert tuned.cfg.n_action_steps == 3


def test_push_t_gets_dppo_robomimic_settings_and_the_success_reward() -> None:
    """configs/dppo/pusht.yaml applies under `task=pusht` (key=value still wins); locomotion keeps the Gym defaults."""
    from dpstack.config import load_config

    pusht = load_config("finetune", DPPOConfig, ["task=pusht", "checkpoint=c", "out=o"])
    hopper = load_config("finetune", DPPOConfig, ["task=hopper", "checkpoint=c", "out=o"])
    assert (pusht.gamma, pusht.clip_base, pusht.epochs, pusht.task.env["reward"]) == (0.999, 0.001, 10, "success")
    # noise floors 0.01 (~2.5 px on Push-T's absolute targets) with the clamp top that keeps the last step unclamped
    assert (pusht.min_sampling_std, pusht.min_logprob_std, pusht.logprob_max) == (0.01, 0.01, 4.0)
    assert (hopper.min_sampling_std, hopper.min_logprob_std, hopper.logprob_max) == (0.1, 0.1, 2.0)
    assert (hopper.gamma, hopper.clip_base, hopper.epochs) == (0.99, 0.01, 5)
    # a tenth of DPPO's actor lr, at its batch scale (README "DPPO": 1e-4 lowered the U-Net's score, 1e-5 raised it)
    assert (pusht.actor_lr, pusht.num_envs, pusht.minibatch_size, pusht.critic_warmup) == (1e-5, 40, 7500, 2)
    assert (hopper.actor_lr, hopper.num_envs, hopper.critic_warmup) == (1e-4, 8, 0)
    lift = load_config("finetune", DPPOConfig, ["task=lift", "checkpoint=c", "out=o"])
    # 40 robosuite envs in this process: 40 async workers need ~25-30 GB (see check_worker_memory); DPPO's own actor
    # lr from the converged noisy-demonstration start (configs/dppo/lift.yaml)
    assert (lift.actor_lr, lift.num_envs, lift.vectorization, lift.gamma) == (1e-4, 40, "sync", 0.999)
    chosen = load_config("finetune", DPPOConfig, ["task=pusht", "checkpoint=c", "out=o", "task.env.reward=coverage"])
    assert chosen.task.env["reward"] == "coverage"
