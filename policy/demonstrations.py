"""Demonstrations from a trained policy (`dpstack collect expert=<checkpoint>`): D4RL-style stores.

The policy acts through the rollout harness in N envs with continuous episodes (env j on seeds
seed + j, seed + j + N, ...), sampling its actions (``deterministic=false``, as D4RL's behaviour
policies did) or taking its mean. Whole episodes are appended to the store as they end, with per step:
the task's observation keys, ``action`` (as executed: clipped to the task's limits), ``reward``, ``terminated`` and ``truncated`` (true on the last
step of an episode that ended that way; offline RL and the Diffuser value net need them apart),
``success`` and ``seed``. Collection stops once the store holds `steps` environment steps; running the
same command again resumes a store that is not full yet.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpstack.data.store import EpisodeStore
from dpstack.envs.collect import check_compatible
from dpstack.envs.registry import task_spec
from dpstack.errors import ConfigError
from dpstack.policy.rollout import Rollouts, RolloutSpec
from dpstack.tasks import TaskConfig


def collect_from_policy(
    policy: Any,
    checkpoint: str,
    task: TaskConfig,
    out: str | Path,
    steps: int,
    num_envs: int = 8,
    seed: int = 0,
    deterministic: bool = False,
    ticks_per_round: int = 250,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill `out` with whole episodes of `policy` until it holds >= `steps` env steps; returns a summary."""
    options = policy.sampler_options(None)
    if hasattr(options, "deterministic"):  # a Gaussian policy: sample (D4RL's behaviour policies did) or take the mean
        options = replace(options, deterministic=deterministic)
    sampler = policy.make_sampler(options)
    if policy.actions_per_tick(sampler) != 1 or policy.cfg.n_obs_steps != 1:
        raise ConfigError(f"{checkpoint}: collection needs a policy that acts one step at a time on one observation")
    out = Path(out)
    store = EpisodeStore.open(out, mode="a") if out.exists() else EpisodeStore.create(out)
    settings = {"task": task.name, "image": task.image, "max_steps": task.max_steps, "env": dict(task.env),
                "policy": str(checkpoint), "deterministic": deterministic, "seed": seed}  # fmt: skip
    check_compatible(store, settings)
    store.set_attrs(collect={**settings, "failed_seeds": []})
    session = policy.session(sampler, torch.Generator().manual_seed(seed))
    spec = RolloutSpec(task, num_envs=num_envs, n_obs_steps=1, actions_per_tick=1, vectorization="sync")
    keys = sorted(policy.obs_features)
    # the store keeps the actions the simulator executed: a sampled Gaussian action beyond the limits is
    # clipped by the env, and a policy cloned from the store should not learn the unexecuted tails
    task_limits = task_spec(task)
    low, high = np.asarray(task_limits.action_low, np.float32), np.asarray(task_limits.action_high, np.float32)
    buffers: list[dict[str, list]] = [{} for _ in range(num_envs)]
    done_seeds = set(np.unique(store.read("seed")).tolist()) if store.n_episodes else set()
    # resuming: start the env seeds past every seed already stored
    first_seed = seed + (max(done_seeds) - seed + 1 if done_seeds else 0)
    returns: list[float] = []
    with torch.no_grad(), Rollouts(spec) as rollouts:
        while store.n_steps < steps:
            batch = rollouts.collect(session, ticks_per_round, seed=first_seed)
            ended_iter = iter(batch.episodes)
            for t in range(batch.reward.shape[0]):
                for i in range(num_envs):
                    buffer = buffers[i]
                    for key in keys:
                        buffer.setdefault(key, []).append(batch.obs[key][t, i, -1].numpy())
                    buffer.setdefault("action", []).append(np.clip(batch.actions[t, i, 0].numpy(), low, high))
                    buffer.setdefault("reward", []).append(np.float32(batch.reward[t, i]))
                    term, trunc = bool(batch.terminated[t, i]), bool(batch.truncated[t, i])
                    buffer.setdefault("terminated", []).append(term)
                    buffer.setdefault("truncated", []).append(trunc)
                    if not (term or trunc):
                        continue
                    episode = next(ended_iter)
                    length = len(buffer["action"])
                    data = {k: np.stack(v) for k, v in buffer.items()}
                    data["success"] = np.full(length, episode["success"])
                    data["seed"] = np.full(length, episode["seed"], np.int64)
                    buffers[i] = {}
                    if store.n_steps < steps:
                        store.append_episode(data)
                        returns.append(episode["return"])
            if progress:
                mean = np.mean(returns) if returns else float("nan")
                print(
                    f"  {store.n_steps}/{steps} steps, {store.n_episodes} episodes, mean return {mean:.1f}", flush=True
                )
    return {
        "episodes_stored": store.n_episodes,
        "steps_stored": store.n_steps,
        "episodes_this_run": len(returns),
        "mean_return_this_run": float(np.mean(returns)) if returns else None,
        "policy": str(checkpoint),
        "task": asdict(task),
    }
