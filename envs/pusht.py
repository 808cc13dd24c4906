"""Push-T (gym-pusht): push a T-shaped block onto a fixed goal pose with a disk agent.

10 Hz control of a PD-driven disk whose 2-d action is a target position in [0, 512]^2; 300 steps.
Observations: ``agent_pos`` (2) plus ``keypoints`` (16: the T's 8 corner points, which avoid the
angle wrap of the 5-d state), or ``image`` (96x96x3) plus ``agent_pos`` with ``image=True``.

Success: coverage of the goal > 0.95 (the episode then ends). Score: the episode's max of
clip(coverage / 0.95, 0, 1), which is the number Diffusion Policy reports as Push-T "coverage";
``info["max_coverage"]`` keeps the raw fraction. Evaluation seeds start at 100000, as in Diffusion Policy.

Reward (``reward=``, what RL maximizes; success and score do not depend on it):

- ``coverage`` (gym-pusht's): clip(coverage / 0.95, 0, 1) every step. Since success ends the episode,
  an agent that hovers just below the threshold collects more of it than one that finishes.
- ``progress``: the change of that clipped coverage over the step, plus 1 on the step that succeeds. An
  episode's sum is final minus initial coverage plus 1 on success, so finishing is what pays.
- ``success``: 1 on the step that succeeds, else 0 (sparse): an episode's sum is its success, so nothing
  pays for coverage short of it.
- ``success_time``: on the step that succeeds, the share of the episode's steps still left, counting that
  step ((max_steps - t) / max_steps after t earlier steps), else 0. DPPO's robomimic tasks do not end on
  success and pay 1 for every step spent in it, so their return is the steps left at success; gym-pusht
  ends the episode there, and this pays that return at once (divided by max_steps). Finishing sooner pays
  more, which the `success` reward under gamma 0.999 barely does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpstack.envs.base import TaskEnv
from dpstack.errors import ConfigError
from dpstack.features import Feature
from dpstack.tasks import TaskSpec

EVAL_SEED = 100_000
SUCCESS_COVERAGE = 0.95


REWARDS = ("coverage", "progress", "success", "success_time")


class PushTEnv(TaskEnv):
    @classmethod
    def spec(
        cls, image: bool = False, max_steps: int = 300, render_size: int = 256, reward: str = "coverage"
    ) -> TaskSpec:
        features = (
            {"image": Feature((96, 96, 3), "uint8", "image"), "agent_pos": Feature((2,))}
            if image
            else {"agent_pos": Feature((2,)), "keypoints": Feature((16,))}
        )
        return TaskSpec("pusht", features, Feature((2,)), (0.0, 0.0), (512.0, 512.0), 10.0, max_steps)

    def __init__(
        self, image: bool = False, max_steps: int = 300, render_size: int = 256, reward: str = "coverage"
    ) -> None:
        from gym_pusht.envs.pusht import PushTEnv as GymPushT  # the simulator loads only when built

        if reward not in REWARDS:
            raise ConfigError(f"task pusht: env.reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        self.image, self.reward = image, reward
        self._env = GymPushT(
            obs_type="pixels_agent_pos" if image else "environment_state_agent_pos",
            render_mode="rgb_array",
            visualization_width=render_size,
            visualization_height=render_size,
        )
        self._init_from_spec(self.spec(image, max_steps, render_size))

    @property
    def sim(self) -> Any:
        return self._env

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.image:
            return {"image": raw["pixels"], "agent_pos": raw["agent_pos"]}
        return {"agent_pos": raw["agent_pos"], "keypoints": raw["environment_state"]}

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raw, _ = self._env.reset(seed=seed)
        self._max_coverage = 0.0
        self._potential = self._clipped_coverage() if self.reward == "progress" else 0.0
        return self._convert(raw), {"score": 0.0, "max_coverage": 0.0}

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        raw, reward, terminated, _, info = self._env.step(action)
        if self.reward == "progress":
            potential = float(reward)  # gym-pusht's reward is the clipped coverage
            reward = potential - self._potential + float(info["is_success"])
            self._potential = potential
        elif self.reward == "success":
            reward = float(info["is_success"])
        elif self.reward == "success_time":
            reward = float(info["is_success"]) * (self.max_steps - self._t) / self.max_steps  # _t: earlier steps
        self._max_coverage = max(self._max_coverage, float(info["coverage"]))
        score = min(self._max_coverage / SUCCESS_COVERAGE, 1.0)
        return (
            self._convert(raw),
            float(reward),
            {
                "is_success": bool(info["is_success"]),
                "terminated": bool(terminated),
                "coverage": float(info["coverage"]),
                "max_coverage": self._max_coverage,
                "score": score,
            },
        )

    def _clipped_coverage(self) -> float:
        """clip(coverage / 0.95, 0, 1) of the current state, as gym-pusht's reward computes it."""
        return float(np.clip(self._env._get_coverage() / self._env.success_threshold, 0.0, 1.0))

    def render(self) -> np.ndarray:
        return self._env.render()

    def close(self) -> None:
        self._env.close()
