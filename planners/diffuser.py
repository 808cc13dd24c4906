"""Diffuser for goal reaching: plan a whole trajectory from the start to the goal once, track it with a PD law.

`DiffuserPlanner` is trained like a policy (`dpstack train policy=diffuser`) on the same episode
stores: windows of `horizon` steps of [action, state] (`state_key`), conditioned by inpainting the
window's first and last states. To act (PointMaze, as Diffuser's Maze2D), it plans once per episode
from the current state to the goal (`goal_key`, placed at the end of the horizon with zero velocity)
and tracks the planned states with

    action = kp * (plan[t + 1].position - position) + kd * (plan[t + 1].velocity - velocity)

holding the last planned state once the plan is used up. It replans from the current state when
the robot drifts further than `replan_distance` from the plan (0: never).

It offers the policy interface (`reset()`, `select_action(obs)`, `predict_action_chunk(obs)`,
`session()`, `make_sampler()`), so `dpstack eval` and `evaluate_policy` run it unchanged and write the
same eval.json fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.base import Feature
from planners.diffusion import TrajectoryDiffusion
from policy.denoisers import DENOISERS
from policy.denoisers import unet1d as unet_presets
from policy.methods import PolicyModule
from policy.normalizer import Normalizer


@dataclass(frozen=True)
class DiffuserOptions:
    """`policy.method_kwargs` of a diffuser config (validated here: unknown keys are errors)."""

    state_key: str = "state"  # the observation key planned over (position first, then velocity)
    goal_key: str = "goal"  # the observation key holding the goal position
    action_weight: float = 10.0  # loss weight of the first action
    kp: float = 10.0  # PD gains of the plan-tracking law
    kd: float = 1.0
    replan_distance: float = 0.0  # replan when this far from the planned position (0: plan once)


@dataclass(frozen=True)
class PlanSampler:
    """How a plan is sampled: DDPM over `num_inference_steps` levels (None: all), with inpainting."""

    num_inference_steps: int | None = None
    actions_per_tick: int = 1
    stateful: bool = False

    @property
    def name(self) -> str:
        return f"diffuser-ddpm{'-' + str(self.num_inference_steps) if self.num_inference_steps else ''}"

    def chunk_length(self, horizon: int) -> int:
        return 1  # one tracked action per control tick


class DiffuserPlanner(PolicyModule):
    """Trajectory diffusion + normalizer + PD tracking; built from a PolicyConfig with method=diffuser."""

    def __init__(
        self,
        cfg: Any,
        obs_features: Mapping[str, Feature],
        action_feature: Feature,
        normalizer: Normalizer | None = None,
    ) -> None:
        super().__init__()
        try:
            self.options = DiffuserOptions(**cfg.method_kwargs)
        except TypeError as exc:
            raise ValueError(
                f"policy.method_kwargs: {exc}; valid keys: {', '.join(DiffuserOptions.__dataclass_fields__)}"
            ) from None
        opts = self.options
        for key in (opts.state_key, opts.goal_key):
            if key not in obs_features:
                raise ValueError(f"diffuser: observation key {key!r} not in the task's {sorted(obs_features)}")
        self.cfg = cfg
        self.obs_features = dict(obs_features)
        self.action_feature = action_feature
        self.action_dim = int(action_feature.shape[0])
        self.state_dim = int(np.prod(obs_features[opts.state_key].shape))
        self.goal_dim = int(np.prod(obs_features[opts.goal_key].shape))
        self.normalizer = normalizer if normalizer is not None else Normalizer()
        kwargs = {**unet_presets.PRESETS[cfg.preset], **cfg.denoiser_kwargs}
        denoiser = DENOISERS["unet"](self.action_dim + self.state_dim, 0, **kwargs)
        self.schedule = cfg.schedule()
        self.diffusion = TrajectoryDiffusion(
            denoiser, self.action_dim, self.state_dim, self.schedule, opts.action_weight
        )

    def data_timing(self) -> dict[str, int]:
        """Training windows: the state of every step of the horizon is planned over."""
        return {"horizon": self.cfg.horizon, "n_obs_steps": self.cfg.horizon, "n_action_steps": 1}

    # ------------------------------------------------------------------ training
    def _trajectories(self, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.normalizer.normalize("action", actions), self.normalizer.normalize(self.options.state_key, states)],
            dim=-1,
        )

    def compute_loss(
        self, batch: Mapping[str, Any], noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a batch {"obs": {state_key: (B, H, S), ...}, "action": (B, H, A)} of raw values."""
        x = self._trajectories(batch["action"], batch["obs"][self.options.state_key])
        conditions = {0: x[:, 0, self.action_dim :], x.shape[1] - 1: x[:, -1, self.action_dim :]}
        loss = self.diffusion.loss(x, conditions, noise=noise, timesteps=timesteps)
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ planning
    def goal_state(self, goal: torch.Tensor) -> torch.Tensor:
        """Raw goal position (B, G) -> the raw state to reach: that position, every other dim 0 (at rest)."""
        state = goal.new_zeros(goal.shape[0], self.state_dim)
        state[:, : self.goal_dim] = goal
        return state

    @torch.no_grad()
    def plan(
        self,
        state: torch.Tensor,
        goal: torch.Tensor,
        sampler: PlanSampler | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw start states (B, S) and goals (B, G) -> raw planned {"action": (B, H, A), "state": (B, H, S)}."""
        sampler = sampler or self.default_sampler()
        key = self.options.state_key
        start = self.normalizer.normalize(key, state.to(self.device).float())
        end = self.normalizer.normalize(key, self.goal_state(goal.to(self.device).float()))
        x = self.diffusion.sample(
            {0: start, self.cfg.horizon - 1: end},
            self.cfg.horizon,
            state.shape[0],
            sampler.num_inference_steps,
            generator,
        )
        return {
            "action": self.normalizer.unnormalize("action", x[..., : self.action_dim]),
            "state": self.normalizer.unnormalize(key, x[..., self.action_dim :]),
        }

    # ------------------------------------------------------------------ the policy interface
    def make_sampler(self, cfg: Any = None) -> PlanSampler:
        name = getattr(cfg, "name", cfg)
        if name not in (None, "ddpm"):
            raise ValueError(f"the diffuser planner samples plans with ddpm only, got sampler {name!r}")
        steps = getattr(cfg, "num_inference_steps", None) or self.cfg.num_inference_steps
        return PlanSampler(num_inference_steps=steps)

    def default_sampler(self) -> PlanSampler:
        return self.make_sampler()

    def actions_per_tick(self, sampler: PlanSampler) -> int:
        return 1

    def session(self, sampler: PlanSampler | None = None, generator: torch.Generator | None = None) -> PlannerSession:
        return PlannerSession(self, sampler or self.default_sampler(), generator)

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw obs {key: (B, 1, ...)} -> the planned raw actions (B, H, A) from the current state to the goal."""
        key, goal = self.options.state_key, self.options.goal_key
        return self.plan(obs[key][:, -1], obs[goal][:, -1], generator=generator)["action"]


class PlannerSession:
    """One episode of plan tracking (a `RecedingHorizon` chunk source of one action per tick)."""

    def __init__(
        self, planner: DiffuserPlanner, sampler: PlanSampler, generator: torch.Generator | None = None
    ) -> None:
        self.planner, self.sampler, self.generator = planner, sampler, generator
        self.actions_per_tick = 1
        self.network_evaluations = 0
        self.plans = 0
        self.reset()

    def reset(self) -> None:
        self.plan: np.ndarray | None = None  # (B, H, S) raw planned states
        self.t = np.zeros(0, int)  # per environment: index of the current step in its plan

    def _replan(self, state: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> None:
        planned = (
            self.planner.plan(torch.as_tensor(state[rows]), torch.as_tensor(goal[rows]), self.sampler, self.generator)[
                "state"
            ]
            .cpu()
            .numpy()
        )
        if self.plan is None:
            self.plan, self.t = planned, np.zeros(len(state), int)
        else:
            self.plan[rows], self.t[rows] = planned, 0
        steps = self.sampler.num_inference_steps or self.planner.schedule.num_train_timesteps
        self.network_evaluations += steps
        self.plans += 1

    def __call__(self, history: Mapping[str, np.ndarray]) -> np.ndarray:
        opts = self.planner.options
        state, goal = history[opts.state_key][:, -1], history[opts.goal_key][:, -1]
        if self.plan is None:
            self._replan(state, goal, np.arange(len(state)))
        g = self.planner.goal_dim
        if opts.replan_distance > 0:
            planned_now = self.plan[np.arange(len(state)), np.minimum(self.t, self.plan.shape[1] - 1)]
            drifted = np.flatnonzero(np.linalg.norm(planned_now[:, :g] - state[:, :g], axis=1) > opts.replan_distance)
            if len(drifted):
                self._replan(state, goal, drifted)
        target = self.plan[np.arange(len(state)), np.minimum(self.t + 1, self.plan.shape[1] - 1)]
        action = opts.kp * (target[:, :g] - state[:, :g]) + opts.kd * (target[:, g:] - state[:, g:])
        self.t += 1
        return action[:, None].astype(np.float32)
