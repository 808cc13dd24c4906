"""Evaluate a trained policy in closed loop on its task; writes <out>/eval.json and rollout videos.

Episode i runs on seed `seed + i` (default: the task's evaluation seed, 100000 for Push-T) in
`num_envs` parallel environments. eval.json holds task, sampler, episodes, seeds, success_rate,
mean_score, nfe_per_action (measured network evaluations per executed action), tick_ms_p50/p99 and
per-episode results. `sampler=<name>` picks configs/sampler/<name>.yaml; its options are overridden as
`sampler.<key>=value` (e.g. sampler=rti sampler.timesteps=[3,1,0]). threads=1 is fastest for batch-1 control on a shared CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpstack.bounds import OUTPUT_DIRECTORY, bounds

CONFIG_NAME = "eval"


@dataclass
class Config:
    checkpoint: str = field(
        default="???", metadata={"help": "training run dir, checkpoint dir, or (backend=onnx) a `dpstack export` dir"}
    )
    out: str = field(default="???", metadata={"help": "directory for eval.json and videos", **OUTPUT_DIRECTORY})
    episodes: int = field(default=50, metadata={"help": "number of episodes (seeds seed, seed+1, ...)", **bounds(1)})
    seed: int | None = field(default=None, metadata={"help": "first seed (default: the task's eval_seed)", **bounds(0)})
    sampler: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "sampler=ddpm|ddim|streaming|rti, plan for planners (default: the policy's); options as sampler.<key>=..."
        },
    )
    backend: str = field(
        default="torch",
        metadata={"help": "torch | onnx (exports the checkpoint to <out>/onnx unless it is an export dir)"},
    )
    latency_steps: int = field(
        default=0,
        metadata={"help": "ticks between an observation and its chunk taking effect (latency-aware)", **bounds(-1)},
    )
    num_envs: int = field(default=2, metadata={"help": "parallel environments", **bounds(1)})
    videos: int = field(default=2, metadata={"help": "episodes to save as videos", **bounds(0)})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads", **bounds(1)})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    progress: bool = field(default=True, metadata={"help": "print progress"})


def run(cfg: Config) -> int:
    import torch

    from dpstack.commands import load_policy_and_sampler
    from dpstack.errors import ConfigError
    from dpstack.policy.evaluate import evaluate_policy

    torch.set_num_threads(cfg.threads)
    if cfg.backend not in ("torch", "onnx"):
        raise ConfigError(f"backend must be torch or onnx, got {cfg.backend!r}")
    if cfg.backend == "onnx":
        return _run_onnx(cfg)
    policy, task, sampler = load_policy_and_sampler(cfg.checkpoint, cfg.sampler, cfg.device)
    spec = _spec(cfg, task)
    record = evaluate_policy(policy, spec, sampler)
    _report(task.name, record, spec.first_seed, cfg)
    return 0


def _spec(cfg: Config, task: Any) -> Any:
    from dpstack.policy.evaluate import EvalSpec

    return EvalSpec(
        task, cfg.episodes, cfg.seed, cfg.num_envs, cfg.latency_steps, Path(cfg.out), cfg.videos, cfg.progress
    )


def _run_onnx(cfg: Config) -> int:

    from dpstack.policy.evaluate import evaluate_exported
    from dpstack.policy.runtime import read_export_metadata
    from dpstack.tasks import TaskConfig

    model_dir = Path(cfg.checkpoint)
    if not (model_dir / "policy.json").is_file():  # a training run: export it with the chosen sampler first
        from dpstack.commands import export

        model_dir = Path(cfg.out) / "onnx"
        export.run(export.Config(checkpoint=cfg.checkpoint, out=str(model_dir), sampler=cfg.sampler, check_ticks=0))
    task = TaskConfig(**read_export_metadata(model_dir)["task"])
    spec = _spec(cfg, task)
    record = evaluate_exported(model_dir, spec, cfg.threads)
    _report(task.name, record, spec.first_seed, cfg)
    return 0


def _report(task_name: str, record: dict, seed: int, cfg: Config) -> None:
    returns = f", mean return {record['mean_return']:.1f}" if "mean_return" in record else ""
    print(
        f"{task_name} {record['sampler']}: success {record['success_rate']:.2f}, mean score "
        f"{record['mean_score']:.3f}{returns} over {record['episodes']} episodes (seeds {seed}..{seed + cfg.episodes - 1}); "
        f"{record['nfe_per_action']:.2f} NFE/action, tick p50 {record['tick_ms_p50']:.2f} ms, "
        f"p99 {record['tick_ms_p99']:.1f} ms, {record['backend']} -> {Path(cfg.out) / 'eval.json'}"
    )
