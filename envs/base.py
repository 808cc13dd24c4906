"""What a benchmark task is: its features (the one source of shapes), its env, its expert, its score.

A task module (``envs/pusht.py``, ``envs/pointmaze.py``, ...) builds a `TaskEnv`: a gymnasium env whose
observation is a dict of flat numpy arrays named exactly like the episode-store keys, whose action is
one float vector, and whose ``info`` always carries ``is_success`` (reached so far this episode) and
``score`` (the episode's score so far: Push-T max coverage, maze normalized return, robosuite
success). Datasets, policies, the exporter and the ROS node read shapes from `TaskEnv.features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class Feature:
    """One observation or action key: per-step shape, dtype, and how to normalize it."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    normalize: str = "minmax"  # a mode of policy.normalizer: minmax | image | identity
    discrete_dims: tuple[int, ...] = ()  # dims that take a few discrete values (a gripper open/close)
    message: str = ""  # ROS 2 message kind (ros.messages): "" picks by dtype and shape (uint8 HxWxC: image)

    def space(self, low: float = -np.inf, high: float = np.inf) -> gym.spaces.Box:
        if self.dtype == "uint8":
            return gym.spaces.Box(0, 255, self.shape, np.uint8)
        return gym.spaces.Box(low, high, self.shape, np.dtype(self.dtype))


class Expert(Protocol):
    """A scripted demonstrator. It may read (never change) the simulator state through `env.sim`."""

    def reset(self, env: Any) -> None: ...

    def act(self, env: Any) -> np.ndarray: ...


class TaskEnv(gym.Env):
    """Base of every task env: dict observations of `features`, `is_success` / `score` in info.

    Subclasses set `features` (observation keys), `action_feature`, `action_low/high`, `control_hz`,
    `max_steps`, and implement `_reset(seed) -> (obs, info)` and `_step(action) -> (obs, reward,
    info)`; this class handles the time limit, success latching and dtype checks.
    """

    features: dict[str, Feature]
    action_feature: Feature
    action_low: np.ndarray
    action_high: np.ndarray
    control_hz: float
    max_steps: int
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def _init_spaces(self) -> None:
        self.observation_space = gym.spaces.Dict({k: f.space() for k, f in self.features.items()})
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
