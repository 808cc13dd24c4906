"""The task registry: task name -> env class, expert class and fixed constructor arguments.

Adding a task costs one module (its `TaskEnv` subclass, plus an expert module next to it), one line
here, and one `configs/task/<name>.yaml`. Classes are imported only when a task is made, so listing
tasks does not load every simulator.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpstack.errors import ConfigError
from envs.base import Expert, Feature, TaskEnv


@dataclass(frozen=True)
class TaskEntry:
    env: str  # "module:Class" of a TaskEnv
    expert: str  # "module:Class" of an Expert, constructed as Class(rng, noise=..., **expert_kwargs)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    expert_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_seed: int = 100_000


TASKS: dict[str, TaskEntry] = {
    "pusht": TaskEntry("envs.pusht:PushTEnv", "envs.pusht_expert:PushTExpert"),
    "pointmaze-umaze": TaskEntry(
        "envs.pointmaze:PointMazeEnv", "envs.pointmaze_expert:PointMazeExpert", {"maze": "umaze"}
    ),
    "pointmaze-medium": TaskEntry(
        "envs.pointmaze:PointMazeEnv", "envs.pointmaze_expert:PointMazeExpert", {"maze": "medium"}
    ),
    "pointmaze-large": TaskEntry(
        "envs.pointmaze:PointMazeEnv", "envs.pointmaze_expert:PointMazeExpert", {"maze": "large"}
    ),
    "pointmaze-umaze-dense": TaskEntry(
        "envs.pointmaze:PointMazeEnv",
        "envs.pointmaze_expert:PointMazeExpert",
        {"maze": "umaze", "reward_type": "dense"},
    ),
    "lift": TaskEntry(
        "envs.robosuite_tasks:RobosuiteEnv", "envs.robosuite_expert:RobosuiteExpert", {"task": "Lift"}, {"task": "Lift"}
    ),
    "can": TaskEntry(
        "envs.robosuite_tasks:RobosuiteEnv",
        "envs.robosuite_expert:RobosuiteExpert",
        {"task": "PickPlaceCan"},
        {"task": "PickPlaceCan"},
    ),
}


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def task_entry(name: str) -> TaskEntry:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}") from None


def make_env(name: str, **kwargs: Any) -> TaskEnv:
    """Build task `name`; `kwargs` (e.g. image=True, max_steps=..., references) go to its env class."""
    entry = task_entry(name)
    return _load(entry.env)(**entry.env_kwargs, **kwargs)


def action_feature(name: str) -> Feature:
    """The task's declared action feature, without building the env (its class attribute)."""
    return _load(task_entry(name).env).action_feature


def make_expert(name: str, rng: np.random.Generator, noise: float = 0.0) -> Expert:
    entry = task_entry(name)
    return _load(entry.expert)(rng, noise=noise, **entry.expert_kwargs)


@dataclass
class TaskConfig:
    """`configs/task/<name>.yaml`: which task, its observation variant, and its tunables."""

    name: str = "pusht"
    image: bool = False
    max_steps: int | None = None  # None: the task's own default episode length
    eval_seed: int = 100_000
    env: dict[str, Any] = field(default_factory=dict)  # extra env arguments, e.g. score references

    def make_env(self, **overrides: Any) -> TaskEnv:
        kwargs: dict[str, Any] = {"image": self.image, **self.env, **overrides}
        if self.max_steps is not None:
            kwargs.setdefault("max_steps", self.max_steps)
        return make_env(self.name, **kwargs)


def load_task_config(name: str, overrides: list[str] | None = None) -> TaskConfig:
    """`configs/task/<name>.yaml` (with optional key=value overrides) as a validated TaskConfig."""
    from dpstack.config import load_config

    task_entry(name)
    return load_config(f"task/{name}", TaskConfig, overrides or [], command=f"task {name}")
