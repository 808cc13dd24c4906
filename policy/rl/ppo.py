"""Gaussian PPO (`dpstack rl train task=<name> out=<run>`): read it top to bottom.

Clipped-surrogate PPO (Schulman et al. 2017) with the details that make it work on MuJoCo locomotion
(CleanRL's `ppo_continuous_action` set): GAE, advantage normalization per minibatch, value clipping,
global gradient clipping, linear learning-rate annealing, observation normalization (kept in the policy,
so in its checkpoint) and reward scaling by the running standard deviation of the discounted return.
Rollouts come from the shared harness (`dpstack.policy.rollout`) with continuous autoreset; episodes
that hit the time limit bootstrap from their final state, terminated ones do not.

Outputs in `out/`: checkpoints/latest (an ordinary dpstack checkpoint of method ``gaussian``, plus the
train state; written atomically), metrics.jsonl, TensorBoard (tb/), return_curve.png. `resume=true`
continues from the last checkpoint with the same iteration counter, weights, optimizer, normalizers and
random generator; the simulators restart fresh episodes (their seeds derive from the iteration).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpstack.bounds import OUTPUT_DIRECTORY, bounds
from dpstack.envs.registry import task_spec
from dpstack.errors import ConfigError, UserError
from dpstack.policy.checkpoint import (
    load_optimizer_state,
    optimizer_state,
    read_json,
    read_tensors,
    save_policy,
)
from dpstack.policy.diffusion_policy import PolicyConfig
from dpstack.policy.rl.gaussian import GaussianPolicy, RunningNorm
from dpstack.policy.rl.losses import approx_kl, clip_fraction, clipped_surrogate, explained_variance, gae, normalize
from dpstack.policy.rl.losses import value_loss as value_loss_fn
from dpstack.policy.rollout import Rollouts, RolloutSpec
from dpstack.rundir import check_fresh
from dpstack.tasks import TaskConfig


class TrainingDiverged(UserError, RuntimeError):
    """A loss or log-probability became NaN or inf; the last checkpoint is left as it was."""


@dataclass
class PPOConfig:
    """`configs/rl_train.yaml`: `dpstack rl train task=<name> out=<run> [key=value ...]`."""

    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task config group: task=<name>"})
    out: str = field(
        default="???", metadata={"help": "run directory (checkpoints, metrics, TensorBoard)", **OUTPUT_DIRECTORY}
    )
    resume: bool = field(default=False, metadata={"help": "continue the run in `out` from its last checkpoint"})
    init: str | None = field(
        default=None,
        metadata={"help": "start from this Gaussian checkpoint (e.g. behaviour-cloned) instead of scratch"},
    )
    total_steps: int = field(default=1_000_000, metadata={"help": "environment steps in total", **bounds(1)})
    num_envs: int = field(default=8, metadata={"help": "parallel environments", **bounds(1)})
    vectorization: str = field(default="sync", metadata={"help": "sync | async (one worker process per env)"})
    ticks: int = field(default=256, metadata={"help": "rollout length per env per iteration", **bounds(1)})
    epochs: int = field(default=10, metadata={"help": "passes over each rollout", **bounds(1)})
    minibatches: int = field(default=32, metadata={"help": "minibatches per pass", **bounds(1)})
    lr: float = field(
        default=3e-4, metadata={"help": "Adam learning rate (annealed linearly to 0)", **bounds(0, open_low=True)}
    )
    gamma: float = field(default=0.99, metadata={"help": "discount", **bounds(0, 1)})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda", **bounds(0, 1)})
    clip: float = field(default=0.2, metadata={"help": "ratio clip", **bounds(0, open_low=True)})
    value_clip: float | None = field(
        default=0.2, metadata={"help": "value clip (null: none)", **bounds(0, open_low=True)}
    )
    value_coef: float = field(default=0.5, metadata={"help": "value loss weight", **bounds(0)})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus weight", **bounds(0)})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient clip", **bounds(0, open_low=True)})
    target_kl: float | None = field(
        default=None,
        metadata={"help": "stop an update's epochs past this KL (null: never)", **bounds(0, open_low=True)},
    )
    scale_rewards: bool = field(default=True, metadata={"help": "divide rewards by the running std of the return"})
    hidden: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "MLP hidden sizes"})
    init_log_std: float = field(default=0.0, metadata={"help": "initial log std of the actions"})
    activation: str = field(default="tanh", metadata={"help": "hidden activation: tanh | relu"})
    checkpoint_every: int = field(default=10, metadata={"help": "iterations between checkpoints", **bounds(1)})
    snapshot_every: int = field(
        default=0, metadata={"help": "keep checkpoints/iter_<n> every n iterations (0: none)", **bounds(0)}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the weights, the action noise and the env seeds", **bounds(0)}
    )
    threads: int = field(default=1, metadata={"help": "torch threads", **bounds(1)})
    progress: bool = field(default=True, metadata={"help": "print a line per checkpoint"})

    def __post_init__(self) -> None:
        batch = self.num_envs * self.ticks
        if batch % self.minibatches:
            raise ValueError(f"num_envs * ticks = {batch} is not divisible by minibatches = {self.minibatches}")
        if self.total_steps < batch:
            raise ValueError(f"total_steps = {self.total_steps} is less than one iteration ({batch} steps)")


def scale_rewards(
    rewards: torch.Tensor, ended: torch.Tensor, returns: torch.Tensor, norm: RunningNorm, gamma: float
) -> torch.Tensor:
    """Rewards (T, N) divided by the running std of the discounted return (updated in place, as is `returns`, (N,))."""
    for t in range(rewards.shape[0]):
        returns.mul_(gamma).add_(rewards[t].double())
        norm.update(returns[:, None])
        returns.masked_fill_(ended[t], 0.0)
    return rewards / torch.sqrt(norm.var.float() + 1e-8)


def train(cfg: PPOConfig, init: GaussianPolicy | None = None) -> dict[str, Any]:
    """Run (or resume) Gaussian PPO, from scratch or from the policy `init` (cfg.init); returns the last metrics."""
    from torch.utils.tensorboard import SummaryWriter

    out, latest = Path(cfg.out), Path(cfg.out) / "checkpoints" / "latest"
    check_fresh(out, cfg.resume)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = task_spec(cfg.task)
    if len(spec.action_feature.shape) != 1:
        raise ConfigError(f"task {spec.name}: PPO needs a flat action vector, got shape {spec.action_feature.shape}")
    options = {"hidden": list(cfg.hidden), "init_log_std": cfg.init_log_std, "activation": cfg.activation}
    options |= {"action_low": list(spec.action_low), "action_high": list(spec.action_high)}
    policy_cfg = PolicyConfig(method="gaussian", horizon=1, n_obs_steps=1, n_action_steps=1, method_kwargs=options)
    policy = GaussianPolicy(policy_cfg, spec.features, spec.action_feature)
    if init is not None:
        if not isinstance(init, GaussianPolicy):
            raise ConfigError(f"init={cfg.init}: PPO starts from a Gaussian policy, got {type(init).__name__}")
        if {k: f.shape for k, f in init.obs_features.items()} != {k: f.shape for k, f in spec.features.items()}:
            raise ConfigError(f"init={cfg.init}: its observations do not match task {spec.name}'s")
        policy = init  # its own network sizes, action range and observation statistics
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    return_norm, running_return = RunningNorm(1), torch.zeros(cfg.num_envs, dtype=torch.float64)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = cfg.num_envs * cfg.ticks
    iterations = cfg.total_steps // batch_size
    iteration, env_steps, seconds_before = 0, 0, 0.0

    if cfg.resume and (latest / "train_state.json").exists():
        meta = read_json(latest / "train_state.json")
        tensors = read_tensors(latest / "train_state.safetensors")
        policy.load_state_dict(read_tensors(latest / "model.safetensors"))
        load_optimizer_state(optimizer, tensors, meta)
        return_norm.load_state_dict(
            {k[len("return_norm.") :]: v for k, v in tensors.items() if k.startswith("return_norm.")}
        )
        generator.set_state(tensors["rng.generator"])
        iteration, env_steps, seconds_before = meta["iteration"], meta["env_steps"], meta["train_seconds"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    history = [h for h in history if h["iteration"] <= iteration]  # what a killed run logged after its checkpoint
    writer = SummaryWriter(str(out / "tb"), purge_step=iteration)
    start = time.perf_counter()

    def checkpoint() -> None:
        tensors, meta = optimizer_state(optimizer)
        tensors |= {f"return_norm.{k}": v for k, v in return_norm.state_dict().items()}
        tensors["rng.generator"] = generator.get_state()
        meta |= {
            "iteration": iteration,
            "env_steps": env_steps,
            "train_seconds": seconds_before + time.perf_counter() - start,
        }
        extra = {
            "task": asdict(cfg.task),
            "train": {"algorithm": "ppo", "iteration": iteration, "env_steps": env_steps},
        }
        # metrics first: a kill between the two leaves extra lines, which resume drops, never a gap
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        save_policy(latest, policy, extra=extra, train_state=(tensors, meta))
        if cfg.snapshot_every and iteration % cfg.snapshot_every == 0:
            save_policy(out / "checkpoints" / f"iter_{iteration:05d}", policy, extra=extra)
        plot_returns(history, out / "return_curve.png")
        writer.flush()

    @torch.no_grad()
    def act(history_obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rollout policy: sample u ~ pi(.|s), act with its scaled, clipped-by-the-env action."""
        flat = policy.flat_obs(history_obs)
        dist = policy.distribution(flat)
        u = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)
        return policy.to_action(u)[:, None], {"u": u}

    spec_rollout = RolloutSpec(cfg.task, cfg.num_envs, 1, 1, 0, cfg.vectorization)
    last: dict[str, Any] = {}
    with Rollouts(spec_rollout) as rollouts:
        while iteration < iterations:
            # 1. anneal the learning rate, collect a rollout with the current policy
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * (1.0 - iteration / iterations)
            tick_start = time.perf_counter()
            batch = rollouts.collect(act, cfg.ticks, seed=cfg.seed * 1_000_003 + iteration * 10_007)
            rollout_s = time.perf_counter() - tick_start
            env_steps += batch.env_steps

            # 2. normalize observations with stats that include this rollout; old log-probs and values under them
            flat = policy.flat_obs(batch.obs)  # (T, N, obs_dim)
            policy.obs_norm.update(flat)
            u = batch.extras["u"]
            ended = batch.terminated | batch.truncated
            rewards = batch.reward.float()
            if cfg.scale_rewards:
                rewards = scale_rewards(rewards, ended, running_return, return_norm, cfg.gamma)
            with torch.no_grad():
                old_log_prob = policy.distribution(flat).log_prob(u).sum(-1)
                values = policy.value(flat)
                next_values = policy.value(policy.flat_obs(batch.next_obs))
                final_values = policy.value(policy.flat_obs(batch.final_obs))
            advantages, returns = gae(
                rewards, values, next_values, batch.terminated, batch.truncated, final_values, cfg.gamma, cfg.gae_lambda
            )

            # 3. epochs of minibatch updates on the clipped surrogate
            b_flat, b_u = flat.reshape(batch_size, -1), u.reshape(batch_size, -1)
            b_old, b_adv = old_log_prob.reshape(-1), advantages.reshape(-1)
            b_ret, b_val = returns.reshape(-1), values.reshape(-1)
            stats: dict[str, list[float]] = {
                k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
            }
            update_start = time.perf_counter()
            for _ in range(cfg.epochs):
                order = torch.randperm(batch_size, generator=generator)
                for index in order.view(cfg.minibatches, -1):
                    dist = policy.distribution(b_flat[index])
                    log_ratio = dist.log_prob(b_u[index]).sum(-1) - b_old[index]
                    pg_loss = clipped_surrogate(log_ratio, normalize(b_adv[index]), cfg.clip)
                    v_loss = value_loss_fn(policy.value(b_flat[index]), b_val[index], b_ret[index], cfg.value_clip)
                    entropy = dist.entropy().sum(-1).mean()
                    loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"{out}: iteration {iteration}: the loss is {float(loss)} (policy {float(pg_loss)}, "
                            f"value {float(v_loss)}); the last checkpoint ({latest}) is kept as it was"
                        )
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        kl = approx_kl(log_ratio)
                    for key, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy),
                                       ("approx_kl", kl), ("clipfrac", clip_fraction(log_ratio, cfg.clip))):  # fmt: skip
                        stats[key].append(float(value.detach()))
                if cfg.target_kl is not None and np.mean(stats["approx_kl"][-cfg.minibatches :]) > cfg.target_kl:
                    break
            update_s = time.perf_counter() - update_start

            # 4. log, checkpoint
            iteration += 1
            returns_done = [e["return"] for e in batch.episodes]
            last = {
                "iteration": iteration,
                "env_steps": env_steps,
                "episodes": len(batch.episodes),
                "return": float(np.mean(returns_done)) if returns_done else math.nan,
                "episode_length": float(np.mean([e["steps"] for e in batch.episodes])) if batch.episodes else math.nan,
                "score": float(np.mean([e["score"] for e in batch.episodes])) if batch.episodes else math.nan,
                **{k: float(np.mean(v)) for k, v in stats.items()},
                "explained_variance": explained_variance(b_val, b_ret),
                "std": float(policy.log_std.detach().exp().mean()),
                "lr": optimizer.param_groups[0]["lr"],
                "sps": batch.env_steps / (rollout_s + update_s),
                "rollout_s": rollout_s,
                "update_s": update_s,
            }
            history.append(last)
            for key, value in last.items():
                if key != "iteration" and isinstance(value, float) and math.isfinite(value):
                    writer.add_scalar(f"ppo/{key}", value, env_steps)
            if iteration % cfg.checkpoint_every == 0 or iteration == iterations:
                checkpoint()
                if cfg.progress:
                    print(
                        f"iter {iteration}/{iterations} steps {env_steps} return {last['return']:.1f} "
                        f"kl {last['approx_kl']:.4f} clipfrac {last['clipfrac']:.3f} "
                        f"ev {last['explained_variance']:.2f} sps {last['sps']:.0f}",
                        flush=True,
                    )
    writer.close()
    return last


def plot_returns(history: list[dict[str, Any]], path: Path) -> None:
    """Mean episode return (of the episodes that ended in each iteration) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["env_steps"], h["return"]) for h in history if math.isfinite(h.get("return", math.nan))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        ax.plot(*zip(*points, strict=True), label="episode return")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
