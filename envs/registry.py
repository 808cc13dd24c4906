"""The task registry, the one place that lists tasks: name -> env class, expert class, fixed arguments.

Adding a task costs one module (a `TaskEnv` subclass with its `spec`, plus an expert next to it), one
entry here, and one `configs/task/<name>.yaml`. Classes are named by string inside this layer and
imported only when used; a task module imports its simulator only when its env is built, so
`task_spec` reads a task's shapes without loading any simulator.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpstack.envs.base import Expert, TaskEnv
from dpstack.errors import ConfigError
from dpstack.tasks import TaskConfig, TaskSpec


@dataclass(frozen=True)
class TaskEntry:
    env: str  # "module:Class" of a TaskEnv
    # "module:Class" of a scripted Expert, constructed as Class(rng, noise=..., **expert_kwargs); "" when the
    # task's expert is a policy trained here (locomotion: `dpstack rl train`)
    expert: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    expert_kwargs: dict[str, Any] = field(default_factory=dict)
    # private memory of one env worker process (its imports, the simulator and one env), measured on Linux with
    # the rollout harness's workers; the harness refuses async worker counts that would not fit
    worker_memory_mb: int = 100


_MAZE = ("dpstack.envs.pointmaze:PointMazeEnv", "dpstack.envs.pointmaze_expert:PointMazeExpert")
_ROBOSUITE = ("dpstack.envs.robosuite_tasks:RobosuiteEnv", "dpstack.envs.robosuite_expert:RobosuiteExpert")
_ROBOSUITE_WORKER_MB = 700  # robosuite's imports and one env: ~0.62 GB private per worker (Push-T, MuJoCo: ~0.04)
_LOCOMOTION = ("dpstack.envs.locomotion:LocomotionEnv", "")

TASKS: dict[str, TaskEntry] = {
    "pusht": TaskEntry("dpstack.envs.pusht:PushTEnv", "dpstack.envs.pusht_expert:PushTExpert"),
    "pointmaze-umaze": TaskEntry(*_MAZE, {"maze": "umaze"}),
    "pointmaze-medium": TaskEntry(*_MAZE, {"maze": "medium"}),
    "pointmaze-large": TaskEntry(*_MAZE, {"maze": "large"}),
    "pointmaze-umaze-dense": TaskEntry(*_MAZE, {"maze": "umaze", "reward_type": "dense"}),
    "lift": TaskEntry(*_ROBOSUITE, {"task": "Lift"}, {"task": "Lift"}, _ROBOSUITE_WORKER_MB),
    "can": TaskEntry(*_ROBOSUITE, {"task": "PickPlaceCan"}, {"task": "PickPlaceCan"}, _ROBOSUITE_WORKER_MB),
    "hopper": TaskEntry(*_LOCOMOTION, {"body": "hopper"}),
    "walker2d": TaskEntry(*_LOCOMOTION, {"body": "walker2d"}),
    "halfcheetah": TaskEntry(*_LOCOMOTION, {"body": "halfcheetah"}),
}


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def task_entry(name: str) -> TaskEntry:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}") from None


def _env_kwargs(task: TaskConfig | str, overrides: dict[str, Any]) -> tuple[TaskEntry, dict[str, Any]]:
    if isinstance(task, str):
        task = TaskConfig(name=task)
    entry = task_entry(task.name)
    kwargs: dict[str, Any] = {**entry.env_kwargs, "image": task.image, **task.env, **overrides}
    if task.max_steps is not None:
        kwargs.setdefault("max_steps", task.max_steps)
    return entry, kwargs


def task_spec(task: TaskConfig | str, **overrides: Any) -> TaskSpec:
    """The spec of `task` (a TaskConfig or a task name) as data: no simulator is imported or built."""
    entry, kwargs = _env_kwargs(task, overrides)
    try:
        return _load(entry.env).spec(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"task {entry.env}: bad env arguments {sorted(kwargs)} ({exc})") from None


def make_env(task: TaskConfig | str, **overrides: Any) -> TaskEnv:
    """Build `task` (a TaskConfig or a task name); `overrides` (e.g. max_steps=...) go to its env class."""
    entry, kwargs = _env_kwargs(task, overrides)
    return _load(entry.env)(**kwargs)


def worker_memory_mb(name: str) -> int:
    """About how much private memory one env worker process of task `name` holds."""
    return task_entry(name).worker_memory_mb


def make_expert(name: str, rng: np.random.Generator, noise: float = 0.0) -> Expert:
    entry = task_entry(name)
    if not entry.expert:
        raise ConfigError(
            f"task {name!r} has no scripted expert: its expert is a policy trained here (`dpstack rl train task={name}`)"
        )
    return _load(entry.expert)(rng, noise=noise, **entry.expert_kwargs)


def load_task_config(name: str, overrides: list[str] | None = None) -> TaskConfig:
    """`configs/task/<name>.yaml` (with optional key=value overrides) as a validated TaskConfig."""
    from dpstack.config import load_config

    task_entry(name)
    return load_config(f"task/{name}", TaskConfig, overrides or [], command=f"task {name}")
