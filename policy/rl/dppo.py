"""DPPO (`dpstack finetune checkpoint=<pretrained> task=<name> out=<run>`): read it top to bottom.

Diffusion Policy Policy Optimization (Ren et al. 2024): PPO on the two-layer MDP whose inner steps are
the denoising steps of the policy (`dpstack.policy.rl.chain`). The frozen pretrained denoiser runs the
first K - K' steps and a trainable copy the last K' (`FinetunedDenoiser`, so the result is an ordinary
Diffusion Policy checkpoint). Per iteration:

1. roll out N envs for `ticks` control ticks through the shared harness; each tick samples a chunk with
   exploration noise and records the K' + 1 chain samples of the fine-tuned steps;
2. chunk-level GAE on running-scaled rewards (a chunk's reward is the sum over its env steps), with the
   critic V(s) on the policy's own observation features; truncated episodes bootstrap, terminated not;
3. epochs of minibatches over (env step x denoising step) pairs: the clipped surrogate with each
   step's log-likelihood (clamped, averaged over the executed actions), normalized advantages
   discounted by gamma_denoising^(K' - i - 1), a clip that rises from `clip_base` to `clip_last` across
   the steps; critic warm-up, gradient clipping, a target-KL stop;
4. evaluation as DPPO's `deterministic=True` (the fine-tuned chain without the exploration floor: DDPM
   keeps each reverse step's own noise and has none at the last step, DDIM runs with eta 0; seeds from
   `eval_seed`) every `eval_every` iterations, checkpoints, metrics.jsonl, TensorBoard, a PNG. That is the
   checkpoint's own sampler, so a plain `dpstack eval` reproduces it; `eval_mean=true` evaluates DDPM's
   posterior means instead (no noise at all, `sampler=ddpm sampler.deterministic=true`).

The math is in `dpstack.policy.rl.losses` (shared with Gaussian PPO); each config key below has DPPO's
default for its Gym setting (../shared/reference.md section 4), scaled to this machine where noted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpstack import distributed
from dpstack.bounds import OUTPUT_DIRECTORY, bounds
from dpstack.errors import ConfigError
from dpstack.policy.checkpoint import load_optimizer_state, optimizer_state, read_json, read_tensors, save_policy
from dpstack.policy.denoisers.finetuned import FinetunedDenoiser
from dpstack.policy.denoisers.mish import Mish
from dpstack.policy.diffusion_policy import DiffusionPolicy
from dpstack.policy.evaluate import EvalSpec, evaluate_policy
from dpstack.policy.rl.chain import ChainOptions, DenoisingChain
from dpstack.policy.rl.losses import (
    approx_kl,
    clip_coefficients,
    clip_fraction,
    clipped_surrogate,
    denoising_discount,
    explained_variance,
    gae,
    normalize,
    peak_log_density,
    value_loss,
)
from dpstack.policy.rl.ppo import TrainingDiverged, scale_rewards
from dpstack.policy.rollout import Rollouts, RolloutSpec
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler
from dpstack.rundir import check_fresh
from dpstack.tasks import TaskConfig


@dataclass
class DPPOConfig:
    """`configs/finetune.yaml`: `dpstack finetune checkpoint=<pretrained> task=<name> out=<run> [key=value ...]`."""

    checkpoint: str = field(default="???", metadata={"help": "the pretrained Diffusion Policy (run or checkpoint)"})
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task config group: task=<name>"})
    out: str = field(
        default="???", metadata={"help": "run directory (checkpoints, metrics, TensorBoard)", **OUTPUT_DIRECTORY}
    )
    resume: bool = field(default=False, metadata={"help": "continue the run in `out` from its last checkpoint"})
    total_steps: int = field(
        default=1_000_000, metadata={"help": "environment steps in total (all ranks)", **bounds(1)}
    )
    num_envs: int = field(default=8, metadata={"help": "parallel environments (DPPO: 40)", **bounds(1)})
    vectorization: str = field(default="sync", metadata={"help": "sync | async (one worker process per env)"})
    ticks: int = field(default=125, metadata={"help": "control ticks per env per iteration (DPPO: 500)", **bounds(1)})
    sampler: str = field(default="ddpm", metadata={"help": "the Gaussian chain: ddpm | ddim (with eta > 0)"})
    num_inference_steps: int | None = field(
        default=None, metadata={"help": "K (None: ddpm every level, ddim 10)", **bounds(1)}
    )
    eta: float = field(default=1.0, metadata={"help": "DDIM's eta in training (1: DDPM's variance)", **bounds(0)})
    finetuned_steps: int = field(default=10, metadata={"help": "K': the last denoising steps fine-tuned", **bounds(1)})
    actions_per_tick: int | None = field(
        default=None,
        metadata={
            "help": "actions executed per chunk in rollouts (null: the checkpoint's n_action_steps); the "
            "fine-tuned checkpoint keeps it as its n_action_steps, so eval, export and ROS execute the same",
            **bounds(1),
        },
    )
    epochs: int = field(default=5, metadata={"help": "passes over each rollout", **bounds(1)})
    minibatch_size: int = field(
        default=2500, metadata={"help": "(env step x denoising step) pairs per minibatch", **bounds(1)}
    )
    actor_lr: float = field(
        default=1e-4, metadata={"help": "Adam learning rate of the fine-tuned denoiser", **bounds(0, open_low=True)}
    )
    critic_lr: float = field(
        default=1e-3, metadata={"help": "Adam learning rate of the critic", **bounds(0, open_low=True)}
    )
    gamma: float = field(default=0.99, metadata={"help": "discount per control tick (chunk)", **bounds(0, 1)})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda", **bounds(0, 1)})
    gamma_denoising: float = field(
        default=0.99, metadata={"help": "advantage discount over denoising steps", **bounds(0, 1)}
    )
    clip_base: float = field(
        default=0.01, metadata={"help": "PPO clip at the first fine-tuned step", **bounds(0, open_low=True)}
    )
    clip_last: float = field(
        default=0.01, metadata={"help": "PPO clip at the last fine-tuned step", **bounds(0, open_low=True)}
    )
    clip_rate: float = field(default=3.0, metadata={"help": "exponential rate of the clip between them (0: linear)"})
    min_sampling_std: float = field(default=0.1, metadata={"help": "std floor of every step in rollouts", **bounds(0)})
    min_logprob_std: float = field(
        default=0.1, metadata={"help": "std floor in the log-likelihood", **bounds(0, open_low=True)}
    )
    noise_clip: float = field(
        default=3.0, metadata={"help": "clip of the standard-normal draws in rollouts", **bounds(0, open_low=True)}
    )
    final_action_clip: float | None = field(
        default=1.0, metadata={"help": "clip of the sampled chunk (normalized)", **bounds(0, open_low=True)}
    )
    logprob_min: float = field(default=-5.0, metadata={"help": "per-element log-likelihood clamp, low"})
    logprob_max: float = field(
        default=2.0,
        metadata={"help": "per-element log-likelihood clamp, high; >= -log(min_logprob_std) - 0.92 (checked)"},
    )
    value_coef: float = field(default=0.5, metadata={"help": "value loss weight", **bounds(0)})
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={
            "help": "gradient clip of the fine-tuned denoiser (null: none; DPPO's own configs set none)",
            **bounds(0, open_low=True),
        },
    )
    target_kl: float | None = field(
        default=1.0, metadata={"help": "stop an update's epochs past this KL", **bounds(0, open_low=True)}
    )
    scale_rewards: bool = field(default=True, metadata={"help": "divide rewards by the running std of the return"})
    critic_warmup: int = field(default=0, metadata={"help": "first iterations that train the critic only", **bounds(0)})
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256], metadata={"help": "critic MLP"})
    eval_every: int = field(
        default=10, metadata={"help": "iterations between evaluations (0: only at the end)", **bounds(0)}
    )
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation (0: none)", **bounds(0)})
    eval_seed: int = field(
        default=200_000, metadata={"help": "first seed of the evaluations during training", **bounds(0)}
    )
    eval_mean: bool = field(
        default=False,
        metadata={
            "help": "evaluate DDPM's posterior means (no noise at all) instead of DPPO's protocol (each reverse "
            "step's own noise, none at the last step: the checkpoint's own sampler); DDPM only, DDIM evaluates "
            "with eta 0 either way"
        },
    )
    checkpoint_every: int = field(default=5, metadata={"help": "iterations between checkpoints", **bounds(1)})
    seed: int = field(default=0, metadata={"help": "seed of the noise and the env seeds", **bounds(0)})
    threads: int = field(default=2, metadata={"help": "torch threads", **bounds(1)})
    rollout_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch threads of the rollouts' and evaluations' small-batch policy calls (None: 1 under "
            "OMP_WAIT_POLICY=PASSIVE, where waking sleeping threads costs more than they save; else threads)",
            **bounds(1),
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) | cpu | cuda: the networks"})
    progress: bool = field(default=True, metadata={"help": "print a line per checkpoint"})

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ConfigError(f"sampler: {self.sampler!r} is not a Gaussian chain DPPO can fine-tune; use ddpm or ddim")
        if self.sampler == "ddim" and self.eta <= 0:
            raise ConfigError(f"eta: DDIM with eta = {self.eta} is deterministic (no likelihood); use eta > 0")
        if self.finetuned_steps < 1:
            raise ConfigError(f"finetuned_steps must be >= 1, got {self.finetuned_steps}")
        if self.num_envs * self.ticks < 2:
            raise ConfigError("num_envs * ticks must be >= 2")
        peak = peak_log_density(self.min_logprob_std)
        if peak > self.logprob_max:
            floor = math.exp(peak_log_density(1.0) - self.logprob_max)  # the std whose peak is logprob_max
            raise ConfigError(
                f"logprob_max={self.logprob_max}: with min_logprob_std={self.min_logprob_std} the last denoising "
                f"step's log-likelihood reaches {peak:.2f} per element, so most of its elements would be clamped "
                f"and give no gradient; set logprob_max >= {math.ceil(peak * 100) / 100} or min_logprob_std >= "
                f"{math.ceil(floor * 1000) / 1000}"
            )


class Critic(nn.Module):
    """V(s) on the policy's conditioning features (DPPO: MLP 3 x 256, Mish)."""

    def __init__(self, cond_dim: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip([cond_dim, *hidden], hidden, strict=False):
            layers += [nn.Linear(a, b), Mish()]
        self.body = nn.Sequential(*layers, nn.Linear(([cond_dim, *hidden])[-1], 1))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.body(cond).squeeze(-1)


def inference_chain(policy: DiffusionPolicy, cfg: DPPOConfig) -> tuple[DDPMScheduler | DDIMScheduler, torch.Tensor]:
    """The scheduler and the K timesteps of the chain DPPO samples and fine-tunes."""
    schedule = policy.schedule
    if cfg.sampler == "ddpm":
        scheduler: DDPMScheduler | DDIMScheduler = DDPMScheduler(schedule)
        return scheduler, scheduler.timesteps(cfg.num_inference_steps)
    scheduler = DDIMScheduler(schedule, eta=cfg.eta)
    return scheduler, scheduler.timesteps(cfg.num_inference_steps or 10)


def prepare(policy: Any, cfg: DPPOConfig, checkpoint_task: str | None) -> DenoisingChain:
    """Check that `policy` can be fine-tuned as asked and give it its fine-tuned denoiser; the chain to train."""
    where = f"checkpoint={cfg.checkpoint}"
    if not isinstance(policy, DiffusionPolicy):
        method = getattr(getattr(policy, "cfg", None), "method", type(policy).__name__)
        raise ConfigError(f"{where}: method {method!r} cannot be fine-tuned by DPPO (a Diffusion Policy is needed)")
    if checkpoint_task is not None and checkpoint_task != cfg.task.name:
        raise ConfigError(
            f"task={cfg.task.name}: the checkpoint {cfg.checkpoint} was trained on task {checkpoint_task!r}"
        )
    executed = cfg.actions_per_tick or policy.cfg.n_action_steps
    try:  # the policy config's own checks of a chunk layout (the range, a streaming window's chunks)
        layout = replace(policy.cfg, n_action_steps=executed)
    except ValueError as error:
        raise ConfigError(
            f"actions_per_tick={executed} does not fit the checkpoint {cfg.checkpoint}: {error}"
        ) from None
    scheduler, timesteps = inference_chain(policy, cfg)
    if cfg.finetuned_steps > len(timesteps):
        raise ConfigError(
            f"finetuned_steps={cfg.finetuned_steps} exceeds the chain's K = {len(timesteps)} denoising steps"
        )
    chain_options = ChainOptions(
        cfg.min_sampling_std, cfg.min_logprob_std, cfg.noise_clip, cfg.final_action_clip,
        (cfg.logprob_min, cfg.logprob_max),
    )  # fmt: skip
    chain = DenoisingChain(policy, scheduler, timesteps, cfg.finetuned_steps, executed, chain_options)
    below = chain.first_finetuned_timestep
    if isinstance(policy.denoiser, FinetunedDenoiser):  # fine-tuning a fine-tuned policy again (or resuming)
        if policy.denoiser.below != below:
            raise ConfigError(
                f"finetuned_steps={cfg.finetuned_steps}: the checkpoint fine-tuned timesteps below "
                f"{policy.denoiser.below}, this run would fine-tune below {below}"
            )
    else:
        policy.denoiser = FinetunedDenoiser(policy.denoiser, below)
    # the checkpoint's own sampler becomes the chain it was fine-tuned on (DDIM evaluates with eta 0), so
    # `dpstack eval`, the export and the ROS node run the fine-tuned steps where training put them and
    # execute the chunk length it was fine-tuned with
    policy.cfg = replace(layout, finetuned_below=below, sampler=cfg.sampler, num_inference_steps=len(timesteps))
    policy.requires_grad_(False)
    policy.denoiser.finetuned.requires_grad_(True)
    return chain


def rollout_thread_count(requested: int | None, threads: int, wait_policy: str | None) -> int:
    """Torch threads for the policy calls of rollouts and evaluations: one small batch per tick between env steps.

    None picks 1 under OpenMP's PASSIVE wait policy (which dpstack chooses on a busy machine, see
    `dpstack/__init__.py`): there waking the sleeping workers for each small op costs more than they save
    (Push-T, 40 envs x 5 ticks: 2.7 s of inference with 2 sleeping threads, 1.1 s with 1, 1.0 s with 2
    spinning ones), else `threads`.
    """
    if requested is not None:
        return requested
    return 1 if (wait_policy or "").upper() == "PASSIVE" else threads


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads, then restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finetune(cfg: DPPOConfig, policy: Any, checkpoint_task: str | None = None) -> dict[str, Any]:
    """Run (or resume: `policy` is then the run's latest checkpoint) DPPO; returns the last iteration's metrics."""
    from torch.utils.tensorboard import SummaryWriter

    out, latest = Path(cfg.out), Path(cfg.out) / "checkpoints" / "latest"
    check_fresh(out, cfg.resume)
    torch.set_num_threads(cfg.threads)
    inference_threads = rollout_thread_count(cfg.rollout_threads, cfg.threads, os.environ.get("OMP_WAIT_POLICY"))
    torch.manual_seed(cfg.seed)
    # under torchrun each rank runs its own envs and noise; gradients and advantage statistics are global
    # the networks live on `device`; the envs, the noise generator and the reward scaling on the CPU
    world, device = distributed.init(cfg.device)
    world.barrier()  # every rank has checked `out` before rank 0 writes to it
    chain = prepare(policy, cfg, checkpoint_task)
    policy.to(device).train()
    k_ft, executed = cfg.finetuned_steps, policy.cfg.n_action_steps
    critic = Critic(policy.obs_encoder.output_dim, list(cfg.critic_hidden)).to(device)
    distributed.broadcast_parameters(critic, world)
    actor_optimizer = torch.optim.Adam(policy.denoiser.finetuned.parameters(), lr=cfg.actor_lr)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
    return_norm = RunningNormState()
    running_return = torch.zeros(cfg.num_envs, dtype=torch.float64)
    generator = torch.Generator().manual_seed(cfg.seed + 7919 * world.rank)
    iterations = max(1, cfg.total_steps // (cfg.num_envs * cfg.ticks * executed * world.size))  # all ranks' steps
    iteration, env_steps, seconds_before = 0, 0, 0.0
    if cfg.resume and (latest / "train_state.json").exists():
        meta = read_json(latest / "train_state.json")
        tensors = read_tensors(latest / "train_state.safetensors")
        critic.load_state_dict({k[len("critic.") :]: v for k, v in tensors.items() if k.startswith("critic.")})
        load_optimizer_state(actor_optimizer, tensors, meta, "actor_optimizer")
        load_optimizer_state(critic_optimizer, tensors, meta, "critic_optimizer")
        return_norm.load_state_dict({k[12:]: v for k, v in tensors.items() if k.startswith("return_norm.")})
        iteration, env_steps, seconds_before = meta["iteration"], meta["env_steps"], meta["train_seconds"]
        # the same world size resumes each rank's own noise and reward scaling; another gets rank 0's scaling
        own = f"rank{world.rank}." if meta.get("world_size", 1) == world.size and world.size > 1 else ""
        saved_return = tensors[f"{own}running_return"]
        if saved_return.shape == running_return.shape:  # another num_envs starts its envs' returns at 0
            running_return = saved_return.clone()
        if own:
            return_norm.load_state_dict(
                {k[len(own) + 12 :]: v for k, v in tensors.items() if k.startswith(f"{own}return_norm.")}
            )
        if own or world.size == 1:
            generator.set_state(tensors[f"{own}rng.generator"])
        else:  # another world size: each rank draws fresh noise from (seed, rank, iteration)
            generator.manual_seed(cfg.seed + 7919 * world.rank + 104_729 * iteration)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg) | {"world_size": world.size}, indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    history = [h for h in history if h["iteration"] <= iteration]  # what a killed run logged after its checkpoint
    writer = SummaryWriter(str(out / "tb"), purge_step=iteration) if world.main else None
    start = time.perf_counter()

    def checkpoint() -> None:
        """Every rank's noise and reward-scaling state go to rank 0, which alone writes."""
        per_rank = {"running_return": running_return, "rng.generator": generator.get_state()}
        per_rank |= {f"return_norm.{k}": v for k, v in return_norm.state_dict().items()}
        gathered = {k: distributed.gather_tensors(v, world) for k, v in per_rank.items()}
        if not world.main:
            return
        tensors, meta = optimizer_state(actor_optimizer, "actor_optimizer")
        critic_tensors, critic_meta = optimizer_state(critic_optimizer, "critic_optimizer")
        tensors |= critic_tensors | {f"critic.{k}": v for k, v in critic.state_dict().items()}
        tensors |= {f"return_norm.{k}": v for k, v in return_norm.state_dict().items()}
        tensors |= {"running_return": running_return, "rng.generator": generator.get_state()}
        if world.size > 1:
            tensors |= {f"rank{r}.{k}": values[r] for k, values in gathered.items() for r in range(world.size)}
        meta |= critic_meta | {
            "world_size": world.size,
            "iteration": iteration,
            "env_steps": env_steps,
            "train_seconds": seconds_before + time.perf_counter() - start,
        }
        extra = {
            "task": asdict(cfg.task),
            "train": {
                "algorithm": "dppo",
                "pretrained": str(cfg.checkpoint),
                "iteration": iteration,
                "env_steps": env_steps,
                "finetuned_steps": k_ft,
            },
        }
        # metrics first: a kill between the two leaves extra lines, which resume drops, never a gap
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        save_policy(latest, policy, extra=extra, train_state=(tensors, meta))
        plot_curves(history, out / "curves.png")
        writer.flush()

    def evaluate() -> dict[str, float]:
        spec = EvalSpec(cfg.task, episodes=cfg.eval_episodes, seed=cfg.eval_seed, num_envs=min(cfg.eval_episodes, 8))
        # the fine-tuned chain without the exploration floor, as DPPO evaluates (`deterministic=True` in its
        # diffusion_vpg.py keeps DDPM's own noise except at the last step; DDIM gets eta 0): the checkpoint's
        # own sampler, which is what `dpstack eval` runs
        sampler = policy.make_sampler({"deterministic": True}) if cfg.eval_mean and cfg.sampler == "ddpm" else None
        with torch_threads(inference_threads):
            record = evaluate_policy(policy, spec, sampler)
        returns = [e["return"] for e in record["per_episode"]]
        return {"eval_return": float(np.mean(returns)), "eval_return_se": float(np.std(returns) / math.sqrt(len(returns))),
                "eval_success": record["success_rate"], "eval_score": record["mean_score"]}  # fmt: skip

    @torch.no_grad()
    def act(histories: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rollout policy: an exploring chunk and the chain of its fine-tuned steps."""
        tick_start = time.perf_counter()
        cond = policy.condition({k: torch.as_tensor(v, device=device) for k, v in histories.items()})
        x0, recorded = chain.sample(cond, generator)
        if not torch.isfinite(recorded).all():
            raise TrainingDiverged(
                f"{out}: iteration {iteration}: a sampled action chunk is not finite (the fine-tuned denoiser "
                f"diverged); the last checkpoint ({latest}) is kept as it was"
            )
        timing["inference_s"] += time.perf_counter() - tick_start
        actions = policy.normalizer.unnormalize("action", x0[:, policy.cfg.n_obs_steps - 1 :])
        return actions.cpu(), {"chain": recorded.cpu()}

    rollout_spec = RolloutSpec(cfg.task, cfg.num_envs, policy.cfg.n_obs_steps, executed, 0, cfg.vectorization)
    last: dict[str, Any] = {}
    with Rollouts(rollout_spec) as rollouts:
        while iteration < iterations:
            # 1. rollout: each tick an exploring chunk and its recorded chain
            rollout_start, timing = time.perf_counter(), {"inference_s": 0.0}
            seed = cfg.seed * 1_000_003 + iteration * 10_007 + world.rank * 100_000_007  # rank: its own envs
            with torch_threads(inference_threads):
                batch = rollouts.collect(act, cfg.ticks, seed=seed)
            rollout_s = time.perf_counter() - rollout_start
            rank_steps = int(distributed.sum_over_ranks(torch.tensor(batch.env_steps), world))
            env_steps += rank_steps
            update_start = time.perf_counter()

            # 2. chunk-level GAE on scaled rewards; old log-likelihoods of every recorded step
            samples = cfg.ticks * cfg.num_envs
            with torch.no_grad():
                cond = policy.condition(_flatten(batch.obs, device))  # (T N, C): the encoder is frozen
                values = critic(cond).view(cfg.ticks, cfg.num_envs)
                next_values = critic(policy.condition({k: v.to(device) for k, v in batch.next_obs.items()}))
                final_values = critic(policy.condition(_flatten(batch.final_obs, device))).view(cfg.ticks, cfg.num_envs)
            rewards = batch.reward.float()
            if cfg.scale_rewards:
                ended = batch.terminated | batch.truncated
                rewards = scale_rewards(rewards, ended, running_return, return_norm.norm, cfg.gamma)
            advantages, returns = gae(
                rewards.to(device), values, next_values, batch.terminated.to(device), batch.truncated.to(device),
                final_values, cfg.gamma, cfg.gae_lambda,
            )  # fmt: skip
            chains = batch.extras["chain"].to(device).reshape(samples, k_ft + 1, *batch.extras["chain"].shape[3:])
            # pairs (env step, denoising step)
            pair_sample = torch.arange(samples, device=device).repeat_interleave(k_ft)
            pair_step = torch.arange(k_ft, device=device).repeat(samples)
            # critic warm-up: the critic alone learns, so the denoiser's likelihoods (most of an update's time
            # with a U-Net) are not computed at all
            warming_up = iteration < cfg.critic_warmup
            if not warming_up:
                with torch.no_grad():
                    old_log_prob = torch.cat([
                        chain.log_prob(cond[s], chains[s], i)
                        for s, i in zip(pair_sample.split(8192), pair_step.split(8192), strict=True)
                    ])  # fmt: skip
                if not torch.isfinite(old_log_prob).all():
                    raise TrainingDiverged(f"{out}: iteration {iteration}: a rollout log-likelihood is not finite")
            b_adv, b_ret, b_val = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)

            # 3. epochs of minibatches over (env step x denoising step) pairs
            stats: dict[str, list[float]] = {
                k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac", "actor_grad_norm")
            }
            pairs, stop = samples * k_ft, False
            for _ in range(cfg.epochs):
                order = torch.randperm(pairs, generator=generator).to(device)
                for index in order.split(cfg.minibatch_size):
                    s, i = pair_sample[index], pair_step[index]
                    v_loss = value_loss(critic(cond[s]), b_val[s], b_ret[s])
                    if warming_up:
                        loss = cfg.value_coef * v_loss
                        if not torch.isfinite(loss):
                            raise TrainingDiverged(
                                f"{out}: iteration {iteration}: the value loss is {float(v_loss)} (critic warm-up); "
                                f"the last checkpoint ({latest}) is kept as it was"
                            )
                        critic_optimizer.zero_grad()
                        loss.backward()
                        distributed.average_gradients(list(critic.parameters()), world)
                        critic_optimizer.step()
                        stats["value_loss"].append(float(v_loss.detach()))
                        continue
                    log_ratio = chain.log_prob(cond[s], chains[s], i) - old_log_prob[index]
                    normalized = (
                        normalize(b_adv[s]) if world.size == 1 else distributed.normalize_over_ranks(b_adv[s], world)
                    )
                    adv = normalized * denoising_discount(i, k_ft, cfg.gamma_denoising)
                    clip = clip_coefficients(i, k_ft, cfg.clip_base, cfg.clip_last, cfg.clip_rate)
                    pg_loss = clipped_surrogate(log_ratio, adv, clip)
                    loss = pg_loss + cfg.value_coef * v_loss
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"{out}: iteration {iteration}: the loss is {float(loss)} (policy {float(pg_loss)}, "
                            f"value {float(v_loss)}); the last checkpoint ({latest}) is kept as it was"
                        )
                    actor_optimizer.zero_grad()
                    critic_optimizer.zero_grad()
                    loss.backward()
                    distributed.average_gradients(
                        [*policy.denoiser.finetuned.parameters(), *critic.parameters()], world
                    )
                    grad_norm = nn.utils.clip_grad_norm_(
                        policy.denoiser.finetuned.parameters(), cfg.max_grad_norm or math.inf
                    )  # inf: measured, not clipped
                    actor_optimizer.step()
                    critic_optimizer.step()
                    with torch.no_grad():  # the ranks agree on the early stop
                        kl = float(distributed.sum_over_ranks(approx_kl(log_ratio), world)) / world.size
                    stats["policy_loss"].append(float(pg_loss.detach()))
                    stats["value_loss"].append(float(v_loss.detach()))
                    stats["approx_kl"].append(kl)
                    stats["clipfrac"].append(float(clip_fraction(log_ratio, clip)))
                    stats["actor_grad_norm"].append(float(grad_norm))  # before clipping: how often max_grad_norm binds
                    if cfg.target_kl is not None and kl > cfg.target_kl:
                        stop = True
                        break
                if stop:
                    break
            update_s = time.perf_counter() - update_start

            # 4. log, evaluate, checkpoint
            iteration += 1
            done = batch.episodes  # every rank's: sums over ranks
            totals = distributed.sum_over_ranks(
                torch.tensor([len(done), *(sum(float(e[k]) for e in done) for k in ("return", "success", "score"))],
                             dtype=torch.float64), world
            )  # fmt: skip
            count = int(totals[0])
            last = {
                "iteration": iteration,
                "env_steps": env_steps,
                "episodes": count,
                "return": float(totals[1]) / count if count else math.nan,
                "success": float(totals[2]) / count if count else math.nan,
                "score": float(totals[3]) / count if count else math.nan,
                **{k: float(np.mean(v)) if v else math.nan for k, v in stats.items()},  # warm-up: critic only
                "explained_variance": explained_variance(b_val, b_ret),
                "stopped_early": stop,
                "actor_lr": actor_optimizer.param_groups[0]["lr"],  # the record of what a resume ran with
                "sps": rank_steps / (rollout_s + update_s),
                "rollout_s": rollout_s,
                "inference_s": timing["inference_s"],  # of rollout_s: the policy; the rest is simulation + harness
                "update_s": update_s,
            }
            checkpoint_now = iteration % cfg.checkpoint_every == 0 or iteration == iterations
            if not world.main:
                if checkpoint_now:
                    checkpoint()  # hands this rank's state to rank 0
                continue
            if cfg.eval_episodes > 0 and (
                (cfg.eval_every and iteration % cfg.eval_every == 0) or iteration == iterations
            ):
                eval_start = time.perf_counter()
                last |= evaluate()
                last["eval_s"] = time.perf_counter() - eval_start
            history.append(last)
            for key, value in last.items():
                if key != "iteration" and isinstance(value, float) and math.isfinite(value):
                    writer.add_scalar(f"dppo/{key}", value, env_steps)
            if checkpoint_now:
                checkpoint()
                if cfg.progress:
                    evaluated = f" eval {last['eval_return']:.1f}" if "eval_return" in last else ""
                    print(
                        f"iter {iteration}/{iterations} steps {env_steps} return {last['return']:.1f}{evaluated} "
                        f"kl {last['approx_kl']:.4f} clipfrac {last['clipfrac']:.3f} "
                        f"ev {last['explained_variance']:.2f} sps {last['sps']:.0f}",
                        flush=True,
                    )
    if writer is not None:
        writer.close()
    distributed.finish(world)
    return last


class RunningNormState(nn.Module):
    """The running std of the discounted return (reward scaling), as a module so it checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        from dpstack.policy.rl.gaussian import RunningNorm

        self.norm = RunningNorm(1)


def _flatten(obs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """{key: (T, N, To, ...)} -> {key: (T N, To, ...)} on `device`."""
    return {k: v.to(device).reshape(-1, *v.shape[2:]) for k, v in obs.items()}


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training return and evaluation return (with its standard error) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["env_steps"], h["return"]) for h in history if math.isfinite(h.get("return", math.nan))]
    if train:
        ax.plot(*zip(*train, strict=True), label="training episodes (exploring)", alpha=0.6)
    evals = [(h["env_steps"], h["eval_return"], h["eval_return_se"]) for h in history if "eval_return" in h]
    if evals:
        x, y, se = (np.array(v) for v in zip(*evals, strict=True))
        ax.errorbar(x, y, yerr=se, marker="o", label="evaluation (no exploration floor)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
