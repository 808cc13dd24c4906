"""Closed-loop evaluation of a policy on a task: fixed seeds, eval.json, videos.

Episode i runs on seed ``seed + i`` through the rollout harness (`dpstack.policy.rollout`, waves of
`num_envs` episodes), the same path RL rollouts take. The score of an episode is the task env's
``info["score"]`` at its end (Push-T: max coverage score; mazes and locomotion: normalized return;
robosuite: success) and success is its latched ``info["is_success"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dpstack.bounds import bounds, check_bounds
from dpstack.policy.execution import resolve_latency_steps
from dpstack.policy.rollout import EXTRA_INFO_KEYS, Rollouts, RolloutSpec
from dpstack.tasks import TaskConfig

__all__ = ["EXTRA_INFO_KEYS", "EvalSpec", "evaluate_exported", "evaluate_policy", "evaluate_source"]


@dataclass
class EvalSpec:
    """One evaluation: which task, how many episodes from which seed, in how many envs, and what to keep.

    Attributes:
        task: the task config.
        episodes: episodes on seeds seed, seed + 1, ...
        seed: the first seed (None: the task's eval_seed).
        num_envs: parallel environments (worker processes when > 1).
        latency_steps: ticks between an observation and its chunk taking effect (-1: one tick ahead
            when the chunk allows it).
        out_dir: where eval.json and videos go (None: nothing is written).
        videos: episodes to keep as videos (with out_dir).
        progress: print a line per wave.
    """

    task: TaskConfig
    episodes: int = field(default=50, metadata=bounds(1))
    seed: int | None = field(default=None, metadata=bounds(0))
    num_envs: int = field(default=1, metadata=bounds(1))
    latency_steps: int = field(default=0, metadata=bounds(-1))
    out_dir: Path | None = None
    videos: int = field(default=2, metadata=bounds(0))
    progress: bool = False

    def __post_init__(self) -> None:
        check_bounds(EvalSpec, vars(self))  # the configs' own rule, for callers that build a spec in code

    @property
    def first_seed(self) -> int:
        return self.task.eval_seed if self.seed is None else self.seed


def summarize(
    task: TaskConfig, sampler: str, nfe_per_action: float, run: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The eval.json record."""
    episodes = run["episodes"]
    ticks = np.asarray(run["ticks_ms"]) if run["ticks_ms"] else np.zeros(1)
    return {
        "task": task.name,
        "sampler": sampler,
        "episodes": len(episodes),
        "seeds": [e["seed"] for e in episodes],
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "mean_score": float(np.mean([e["score"] for e in episodes])),
        "nfe_per_action": nfe_per_action,
        "tick_ms_p50": float(np.percentile(ticks, 50)),
        "tick_ms_p99": float(np.percentile(ticks, 99)),
        "inference_ms_p50": float(np.percentile(run["inference_ms"], 50)) if run["inference_ms"] else 0.0,
        "mean_steps": float(np.mean([e["steps"] for e in episodes])),
        **{
            f"mean_{k}": float(np.mean([e[k] for e in episodes]))
            for k in EXTRA_INFO_KEYS
            if episodes and k in episodes[0]
        },
        "per_episode": episodes,
        "videos": run["videos"],
        **extra,
    }


def write_eval(out_dir: Path, record: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def evaluate_source(source: Any, n_obs_steps: int, sampler_name: str, spec: EvalSpec, **extra: Any) -> dict[str, Any]:
    """Evaluate a chunk source that counts its work (`actions_per_tick`, `network_evaluations`, `reset()`).

    Writes `<out_dir>/eval.json` and videos when spec.out_dir is given. `nfe_per_action` is measured: the
    network evaluations that ran over the executed ticks, each episode's first tick included.
    """
    rollout = RolloutSpec(
        spec.task,
        num_envs=max(1, min(spec.num_envs, spec.episodes)),
        n_obs_steps=n_obs_steps,
        actions_per_tick=source.actions_per_tick,
        latency_steps=spec.latency_steps,
    )
    video_dir = spec.out_dir / "videos" if spec.out_dir and spec.videos else None
    with Rollouts(rollout) as rollouts:
        run = rollouts.evaluate(source, spec.episodes, spec.first_seed, video_dir, spec.videos, spec.progress)
    nfe_per_action = source.network_evaluations / max(1, len(run["ticks_ms"]))
    measured = source.eval_fields() if hasattr(source, "eval_fields") else {}  # e.g. a planner's planning time
    record = summarize(
        spec.task, sampler_name, nfe_per_action, run, latency_steps=spec.latency_steps, **measured, **extra
    )
    if spec.out_dir is not None:
        write_eval(spec.out_dir, record)
    return record


def evaluate_policy(policy: Any, spec: EvalSpec, sampler: Any = None) -> dict[str, Any]:
    """Evaluate a policy (any method) with a sampler (default: its own); noise from a generator seeded by the seed."""
    import torch

    sampler = sampler or policy.default_sampler()
    predicted = sampler.chunk_length(policy.cfg.horizon) - (policy.cfg.n_obs_steps - 1)
    latency = resolve_latency_steps(
        spec.latency_steps, policy.actions_per_tick(sampler), predicted, f"sampler {sampler.name}"
    )
    session = policy.session(sampler, torch.Generator().manual_seed(spec.first_seed))
    was_training = policy.training
    policy.eval()
    try:
        return evaluate_source(
            session, policy.cfg.n_obs_steps, sampler.name, replace(spec, latency_steps=latency), backend="torch"
        )
    finally:
        policy.train(was_training)


def evaluate_exported(model_dir: str | Path, spec: EvalSpec, threads: int = 1) -> dict[str, Any]:
    """`evaluate_policy` through the PyTorch-free runtime on a `dpstack export` directory."""
    from dpstack.policy.runtime import OnnxPolicy

    runtime = OnnxPolicy(model_dir, threads=threads, seed=spec.first_seed)
    latency = resolve_latency_steps(
        spec.latency_steps, runtime.actions_per_tick, int(runtime.meta["actions_per_output"]), f"the export {model_dir}"
    )
    return evaluate_source(
        runtime,
        runtime.n_obs_steps,
        runtime.meta["sampler"]["name"],
        replace(spec, latency_steps=latency),
        backend="onnx",
        model=str(model_dir),
        weights_sha256=runtime.meta["weights_sha256"],
    )
