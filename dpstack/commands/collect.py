"""Collect expert demonstrations of a task into an episode store.

Runs the task's scripted expert on seeds seed, seed+1, ... in `workers` processes, keeps successful
episodes (all with keep_failed=true) and appends each whole episode to `out`. With expert=<checkpoint>
a trained policy acts instead (the locomotion experts of `dpstack rl train`): whole episodes until the
store holds `steps` env steps, with reward, terminated and truncated per step (D4RL-style). Interrupt it at any
time and run the same command again to resume: stored and failed seeds are skipped, nothing is
duplicated or lost. noise > 0 makes a deliberately weaker dataset (Gaussian action noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dpstack.bounds import bounds
from dpstack.tasks import TaskConfig

CONFIG_NAME = "collect"


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task config group: task=<name>"})
    episodes: int = field(default=10, metadata={"help": "episodes to have in the store when done", **bounds(1)})
    out: str = field(default="???", metadata={"help": "episode store directory (created or resumed)"})
    seed: int = field(
        default=0, metadata={"help": "first seed; episode k uses the k-th unused seed after it", **bounds(0)}
    )
    workers: int = field(default=1, metadata={"help": "parallel worker processes", **bounds(1)})
    noise: float = field(default=0.0, metadata={"help": "std of Gaussian noise added to expert actions", **bounds(0)})
    keep_failed: bool = field(default=False, metadata={"help": "also store episodes that did not succeed"})
    expert: str | None = field(
        default=None, metadata={"help": "a trained checkpoint that acts as the expert instead of a scripted one"}
    )
    steps: int = field(
        default=1_000_000, metadata={"help": "with expert: env steps to have in the store when done", **bounds(1)}
    )
    num_envs: int = field(default=8, metadata={"help": "with expert: parallel environments", **bounds(1)})
    deterministic: bool = field(default=False, metadata={"help": "with expert: its mean action instead of a sample"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def run(cfg: Config) -> int:
    if cfg.expert is not None:
        return _run_policy(cfg)
    from dpstack.envs.collect import collect

    summary = collect(
        cfg.task,
        cfg.episodes,
        cfg.out,
        seed=cfg.seed,
        workers=cfg.workers,
        noise=cfg.noise,
        keep_failed=cfg.keep_failed,
        progress=cfg.progress,
    )
    print(json.dumps(summary, indent=2))
    if summary["interrupted"]:
        print(
            f"interrupted: {summary['episodes_stored']} whole episodes are in {cfg.out}; "
            "run the same command again to resume"
        )
        return 130
    return 0


def _run_policy(cfg: Config) -> int:
    from dpstack.errors import ConfigError
    from dpstack.methods import load_policy
    from dpstack.policy.demonstrations import collect_from_policy

    policy = load_policy(cfg.expert)
    trained_on = policy.checkpoint_config.get("task", {}).get("name")
    if trained_on != cfg.task.name:
        raise ConfigError(
            f"{cfg.expert}: trained on task {trained_on!r}, not {cfg.task.name!r} (give task={trained_on})"
        )
    summary = collect_from_policy(
        policy, cfg.expert, cfg.task, cfg.out, cfg.steps, cfg.num_envs, cfg.seed, cfg.deterministic,
        progress=cfg.progress,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0
