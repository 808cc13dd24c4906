"""The simulator side of a task: `TaskEnv`, the gymnasium env every task module subclasses.

A task module (``envs/pusht.py``, ``envs/pointmaze.py``, ...) declares its `spec` (a classmethod that
returns a `dpstack.tasks.TaskSpec` without importing the simulator) and builds a `TaskEnv` laid out
from that same spec: a gymnasium env whose observation is a dict of flat numpy arrays named exactly
like the episode-store keys, whose action is one float vector, and whose ``info`` always carries
``is_success`` (reached so far this episode) and ``score`` (the episode's score so far: Push-T max
coverage, maze normalized return, robosuite success).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import gymnasium as gym
import numpy as np

from dpstack.features import Feature
from dpstack.tasks import TaskSpec


def feature_space(feature: Feature) -> gym.spaces.Box:
    """The gymnasium space of one observation feature."""
    if feature.dtype == "uint8":
        return gym.spaces.Box(0, 255, feature.shape, np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, feature.shape, np.dtype(feature.dtype))


class Expert(Protocol):
    """A scripted demonstrator. It may read (never change) the simulator state through `env.sim`."""

    def reset(self, env: Any) -> None: ...

    def act(self, env: Any) -> np.ndarray: ...


class TaskEnv(gym.Env):
    """Base of every task env: dict observations of `features`, `is_success` / `score` in info.

    Subclasses implement the classmethod `spec(**env_kwargs) -> TaskSpec` (no simulator import), call
    `_init_from_spec(spec)` once their simulator is built, and implement `_reset(seed) -> (obs, info)`
    and `_step(action) -> (obs, reward, info)`; this class handles the time limit, success latching and
    dtype checks.
    """

    task_spec: TaskSpec
    features: dict[str, Feature]
    action_feature: Feature
    action_low: np.ndarray
    action_high: np.ndarray
    control_hz: float
    max_steps: int
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    @classmethod
    def spec(cls, **env_kwargs: Any) -> TaskSpec:
        """The task variant that `cls(**env_kwargs)` builds, as data (must not import the simulator)."""
        raise NotImplementedError

    def _init_from_spec(self, spec: TaskSpec) -> None:
        self.task_spec = spec
        self.features = dict(spec.features)
        self.action_feature = spec.action_feature
        self.action_low = np.asarray(spec.action_low, np.float32)
        self.action_high = np.asarray(spec.action_high, np.float32)
        self.control_hz = spec.control_hz
        self.max_steps = spec.max_steps
        self.observation_space = gym.spaces.Dict({k: feature_space(f) for k, f in self.features.items()})
        self.action_space = gym.spaces.Box(self.action_low, self.action_high, dtype=np.float32)
        self._t = 0
        self._success = False

    @property
    def sim(self) -> Any:
        """The underlying simulator env (for experts and renderers)."""
        raise NotImplementedError

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self._t = 0
        self._success = False
        obs, info = self._reset(seed)
        info.setdefault("score", 0.0)
        info["is_success"] = False
        return self._cast(obs), info

    def step(self, action: np.ndarray):  # type: ignore[override]
        action = np.asarray(action, dtype=np.float32).reshape(self.action_feature.shape)
        if not np.isfinite(action).all():
            raise ValueError(f"{type(self).__name__}: action {action} contains NaN or inf")
        obs, reward, info = self._step(np.clip(action, self.action_low, self.action_high))
        self._t += 1
        self._success = self._success or bool(info.get("is_success", False))
        info["is_success"] = self._success
        terminated = bool(info.pop("terminated", False))
        truncated = self._t >= self.max_steps
        return self._cast(obs), float(reward), terminated, truncated, info

    def _cast(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(obs[k], dtype=f.dtype).reshape(f.shape) for k, f in self.features.items()}
