"""PointMaze (gymnasium-robotics v3): drive a force-actuated point mass to a goal through a maze.

Mazes ``umaze`` / ``medium`` / ``large`` with D4RL Maze2D episode lengths (300 / 600 / 800 steps).
Each seed draws a goal cell and a different start cell (the env's own sampler, with its position
noise). The task continues after the goal is reached (sparse reward 1 per step within 0.45 of the
goal), as in D4RL, so the return R counts the steps spent at the goal.

Observations: ``state`` (4: x, y, vx, vy) and ``goal`` (2). Action: 2-d force in [-1, 1].
``reward_type="dense"`` gives exp(-distance to the goal) per step instead (the ``-dense`` tasks, a reward
task for value-guided planning). ``reset_target=True`` draws a new goal whenever the goal is reached,
as D4RL's Maze2D data collection does (``dpstack collect ... task.env.reset_target=true``): every
window of such a store is in motion, which is what a trajectory planner learns from.

Score: D4RL-style normalized return 100 * (R - R_random) / (R_expert - R_random), with references
measured in this env (``benchmarks/experts.py``) and stored in ``configs/task/pointmaze-*.yaml``.
Success: the goal was reached during the episode.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import gymnasium as gym
import numpy as np

from dpstack.envs.base import TaskEnv
from dpstack.features import Feature
from dpstack.tasks import TaskSpec, normalized_score

CONTROL_HZ = 100.0  # gymnasium-robotics PointMaze v3: MuJoCo timestep 0.01 s, frame skip 1 (checked when built)
MAZES = {
    "umaze": ("PointMaze_UMaze-v3", 300),
    "medium": ("PointMaze_Medium-v3", 600),
    "large": ("PointMaze_Large-v3", 800),
}


def _register_simulator() -> None:
    with contextlib.redirect_stderr(io.StringIO()):  # silence an import-time notice about Adroit envs
        import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


class PointMazeEnv(TaskEnv):
    @classmethod
    def spec(
        cls,
        maze: str = "umaze",
        image: bool = False,
        max_steps: int | None = None,
        r_random: float | None = None,
        r_expert: float | None = None,
        reward_type: str = "sparse",
        reset_target: bool = False,
    ) -> TaskSpec:
        if maze not in MAZES:
            raise ValueError(f"unknown maze {maze!r}; choose one of {sorted(MAZES)}")
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        if image:
            raise ValueError("pointmaze has no image observation variant (image=false)")
        references = (r_random, r_expert) if r_random is not None and r_expert is not None else None
        return TaskSpec(
            f"pointmaze-{maze}" + ("-dense" if reward_type == "dense" else ""),
            {"state": Feature((4,)), "goal": Feature((2,))},
            Feature((2,)),
            (-1.0, -1.0),
            (1.0, 1.0),
            CONTROL_HZ,
            max_steps or MAZES[maze][1],
            references,
        )

    def __init__(
        self,
        maze: str = "umaze",
        image: bool = False,
        max_steps: int | None = None,
        r_random: float | None = None,
        r_expert: float | None = None,
        reward_type: str = "sparse",
        reset_target: bool = False,
    ) -> None:
        spec = self.spec(maze, image, max_steps, r_random, r_expert, reward_type, reset_target)
        _register_simulator()
        self.maze_name = maze
        self.reward_type = reward_type
        self.references = spec.references
        self._env = gym.make(
            MAZES[maze][0],
            continuing_task=True,
            reset_target=reset_target,
            reward_type=reward_type,
            max_episode_steps=10**9,
        ).unwrapped
        if abs(1.0 / self._env.point_env.dt - CONTROL_HZ) > 1e-6:
            raise RuntimeError(f"PointMaze runs at {1.0 / self._env.point_env.dt} Hz, the spec says {CONTROL_HZ}")
        self._init_from_spec(spec)

    @property
    def sim(self) -> Any:
        return self._env

    @staticmethod
    def _convert(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"state": raw["observation"], "goal": raw["desired_goal"]}

    def _score(self) -> float:
        if self.references is None:
            return self._return
        return normalized_score(self._return, *self.references)

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raw, _ = self._env.reset(seed=seed)
        self._return = 0.0
        return self._convert(raw), {"score": self._score(), "return": 0.0}

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        raw, reward, _, _, info = self._env.step(action)
        self._return += float(reward)
        return (
            self._convert(raw),
            float(reward),
            {
                "is_success": bool(info.get("success", reward > 0)),
                "return": self._return,
                "score": self._score(),
            },
        )

    def render(self) -> np.ndarray:
        """Top-down picture of the maze, the goal and the point (no OpenGL needed)."""
        from dpstack.envs.pointmaze_render import draw_maze

        return draw_maze(self._env, self._env.point_env.data.qpos[:2].copy())

    def close(self) -> None:
        self._env.close()
