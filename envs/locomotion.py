"""MuJoCo locomotion (gymnasium v5): Hopper, Walker2d and HalfCheetah, as D4RL and DPPO use them.

Observation ``state``: the env's own vector (Hopper 11, Walker2d 17, HalfCheetah 17; the x position
left out, gymnasium's default). Action: joint torques in [-1, 1] (3, 6, 6). Control rate 1 / dt:
Hopper and Walker2d 125 Hz (frame skip 4 x 2 ms), HalfCheetah 20 Hz (5 x 10 ms). Episodes last 1000
steps; Hopper and Walker2d end early when the body leaves its healthy range (``terminated``), which
RL must keep apart from the time limit (``truncated``). The reward is the env's own (forward velocity
+ survival bonus - control cost), and ``info["return"]`` is the raw return so far, the number DPPO's
papers quote.

Score: D4RL's normalized return 100 (R - R_random) / (R_expert - R_random) with D4RL's published
references (random / expert: Hopper -20.27 / 3234.3, Walker2d 1.63 / 4592.3, HalfCheetah -280.18 /
12135.0), so numbers compare with published tables; ``benchmarks/experts.py`` also measures a random
policy here. Locomotion has no success event: ``is_success`` stays false.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dpstack.envs.base import TaskEnv
from dpstack.features import Feature
from dpstack.tasks import TaskSpec, normalized_score

# name -> (gymnasium id, observation size, action size, control rate, D4RL random return, D4RL expert return)
BODIES: dict[str, tuple[str, int, int, float, float, float]] = {
    "hopper": ("Hopper-v5", 11, 3, 125.0, -20.27, 3234.3),
    "walker2d": ("Walker2d-v5", 17, 6, 125.0, 1.63, 4592.3),
    "halfcheetah": ("HalfCheetah-v5", 17, 6, 20.0, -280.18, 12135.0),
}


class LocomotionEnv(TaskEnv):
    @classmethod
    def spec(cls, body: str = "hopper", image: bool = False, max_steps: int = 1000) -> TaskSpec:
        if body not in BODIES:
            raise ValueError(f"unknown body {body!r}; choose one of {sorted(BODIES)}")
        if image:
            raise ValueError("locomotion tasks have no image observation variant (image=false)")
        _, obs_dim, act_dim, hz, r_random, r_expert = BODIES[body]
        return TaskSpec(
            body,
            {"state": Feature((obs_dim,), normalize="standard")},  # heavy-tailed joint velocities: z-scores
            Feature((act_dim,)),
            (-1.0,) * act_dim,
            (1.0,) * act_dim,
            hz,
            max_steps,
            (r_random, r_expert),
        )

    def __init__(self, body: str = "hopper", image: bool = False, max_steps: int = 1000) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering (videos); set before MuJoCo renders
        import gymnasium as gym  # MuJoCo loads only when an env is built

        spec = self.spec(body, image, max_steps)
        self.body = body
        # no TimeLimit: TaskEnv owns the episode length
        self._env = gym.make(BODIES[body][0], render_mode="rgb_array", width=256, height=256).unwrapped
        if abs(1.0 / self._env.dt - spec.control_hz) > 1e-6:
            raise RuntimeError(f"{BODIES[body][0]} runs at {1.0 / self._env.dt} Hz, the spec says {spec.control_hz}")
        self._init_from_spec(spec)

    @property
    def sim(self) -> Any:
        return self._env

    def _info(self) -> dict[str, Any]:
        return {"return": self._return, "score": normalized_score(self._return, *self.task_spec.references)}

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, _ = self._env.reset(seed=seed)
        self._return = 0.0
        return {"state": obs}, self._info()

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        obs, reward, terminated, _, _ = self._env.step(action.astype(np.float64))
        self._return += float(reward)
        return {"state": obs}, float(reward), {**self._info(), "is_success": False, "terminated": bool(terminated)}

    def render(self) -> np.ndarray:
        return self._env.render()

    def close(self) -> None:
        self._env.close()
