"""Tasks as data (core layer): what a task is, readable without building (or importing) its simulator.

`TaskConfig` is what a user picks (``configs/task/<name>.yaml``, ``task=<name> task.image=true``);
`TaskSpec` is what the task then is: its observation features, action feature and limits, control rate,
episode length and score references. Training on a store, export, ``dpstack dataset info`` and the ROS
tools read the spec (``dpstack.envs.registry.task_spec``); only closed-loop evaluation and collection
build the simulator, and the env they build is laid out from the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpstack.bounds import bounds
from dpstack.features import Feature


@dataclass(frozen=True)
class TaskSpec:
    """One task variant as data.

    Attributes:
        name: the task's registry name (``pusht``, ``lift``, ...).
        features: observation keys (the episode-store keys) -> per-step Feature.
        action_feature: the action vector's Feature.
        action_low, action_high: per-dim action limits (the env clips to them).
        control_hz: control ticks per second of simulated time.
        max_steps: episode length (the time limit).
        references: (random, expert) returns of a normalized score 100 (R - random) / (expert - random),
            None where the score is not a normalized return.
    """

    name: str
    features: dict[str, Feature]
    action_feature: Feature
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float
    max_steps: int
    references: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        n = self.action_feature.shape[0] if len(self.action_feature.shape) == 1 else -1
        if n != len(self.action_low) or n != len(self.action_high):
            raise ValueError(
                f"task {self.name!r}: action limits of length {len(self.action_low)}/{len(self.action_high)} "
                f"do not match the action shape {self.action_feature.shape}"
            )


def normalized_score(episode_return: float, r_random: float, r_expert: float) -> float:
    """D4RL's normalized score: 0 = the random reference, 100 = the expert reference."""
    return 100.0 * (episode_return - r_random) / (r_expert - r_random)


@dataclass
class TaskConfig:
    """`configs/task/<name>.yaml`: which task, its observation variant, and its tunables."""

    name: str = "pusht"
    image: bool = False
    max_steps: int | None = field(default=None, metadata=bounds(1))  # None: the task's own default episode length
    eval_seed: int = field(default=100_000, metadata=bounds(0))  # seeds must be >= 0 (gymnasium)
    env: dict[str, Any] = field(default_factory=dict)  # extra env arguments, e.g. score references
