"""Diffuser: plan by denoising whole state-action trajectories, then track the plan with a PD law.

`DiffuserPlanner` is trained like a policy (`dpstack train policy=diffuser ...`) on the same episode
stores: windows of `horizon` steps of [action, state] (`state_key`) that stay inside their episode,
conditioned by inpainting the window's first state and, for goal reaching (`condition_goal`), its last.
With `value_discount` > 0 a value network (`dpstack.planners.value`) is trained beside it on noised windows to
predict the discounted return-to-go of the store's reward.

Acting, two modes:
- goal reaching (PointMaze, as Diffuser's Maze2D): plan once per episode from the current state to
  the goal (`goal_key`, placed at the end of the horizon at rest) and track the planned states with
  `action = kp * (plan[t + 1].position - position) + kd * (plan[t + 1].velocity - velocity)`,
  holding the last planned state once the plan is used up; replan when the robot drifts further than
  `replan_distance` from the plan (0: never).
- value-guided receding horizon (reward tasks): every `replan_every` ticks, sample `n_samples` plans
  from the current state with the value gradient guiding each reverse step (`guide_scale`,
  `n_guide_steps`, `t_stopgrad`), execute the one of highest value by the same PD tracking.

It offers the policy interface (`reset()`, `select_action(obs)`, `predict_action_chunk(obs)`,
`session()`, `make_sampler()`), so `dpstack eval` and `evaluate_policy` run it unchanged and write the
same eval.json fields, plus the planning time (`plan_ms_p50`, `plans_per_episode`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from dpstack.bounds import bounds
from dpstack.features import Feature
from dpstack.planners.diffusion import GuideConfig, TrajectoryDiffusion, inpaint
from dpstack.planners.value import TrajectoryValue
from dpstack.policy.denoisers import DENOISERS
from dpstack.policy.denoisers import unet1d as unet_presets
from dpstack.policy.module import PolicyModule, method_options
from dpstack.policy.normalizer import Normalizer


def first_arrival(positions: torch.Tensor, goal: torch.Tensor, radius: float) -> torch.Tensor:
    """Planned positions (B, H, G) and goals (B, G) -> (B,) the first index within `radius` of the goal
    (H where a plan never comes that close)."""
    near = torch.linalg.vector_norm(positions - goal[:, None], dim=-1) <= radius
    never = torch.full_like(near[:, 0], positions.shape[1], dtype=torch.long)
    return torch.where(near.any(dim=1), near.long().argmax(dim=1), never)


@dataclass(frozen=True)
class DiffuserOptions:
    """`policy.method_kwargs` of a diffuser config (validated here: unknown keys are errors)."""

    state_key: str = "state"  # the observation key planned over (position first, then velocity)
    goal_key: str = "goal"  # the observation key holding the goal position ("": the task has none)
    action_weight: float = 10.0  # loss weight of the first action
    kp: float = 10.0  # PD gains of the plan-tracking law
    kd: float = 1.0
    replan_distance: float = 0.0  # replan when this far from the planned position (0: never for that reason)
    condition_goal: bool = True  # inpaint the goal at the end of the horizon (goal reaching)
    # also give the conditioned states to the denoiser by FiLM (see TrajectoryDiffusion)
    global_conditioning: bool = True
    value_discount: float = 0.0  # > 0: train a value net on the discounted return-to-go (Diffuser: 0.997)
    guide_scale: float = 0.0  # value guidance step size (0: unguided)
    n_guide_steps: int = 2
    t_stopgrad: int = 2  # no guidance at diffusion timesteps below this
    n_samples: int = 1  # plans per decision; the best by value (or, without one, the first to arrive) runs
    replan_every: int = 0  # receding horizon: replan every N control ticks (0: plan once per episode)
    # goal reaching: cut each plan at its first state this close to the goal and hold the goal from there
    # (0: track the whole plan, as Diffuser does, overshoots included)
    stop_at_goal: float = 0.0

    def __post_init__(self) -> None:
        if self.condition_goal and not self.goal_key:
            raise ValueError("condition_goal=true needs a goal_key")
        if not 0.0 <= self.value_discount < 1.0:
            raise ValueError(f"value_discount must be in [0, 1), got {self.value_discount}")
        if self.n_samples < 1 or self.replan_every < 0 or self.n_guide_steps < 0 or self.stop_at_goal < 0:
            raise ValueError("need n_samples >= 1, replan_every >= 0, n_guide_steps >= 0 and stop_at_goal >= 0")


@dataclass
class PlanOptions:
    """`sampler=plan`: how the Diffuser planner samples and uses its plans (None: the planner's preset)."""

    name: str = "plan"
    num_inference_steps: int | None = field(default=None, metadata={"help": "DDPM levels (None: all)", **bounds(1)})
    guide_scale: float | None = field(default=None, metadata={"help": "value-guidance scale, 0 unguided", **bounds(0)})
    n_samples: int | None = field(
        default=None,
        metadata={"help": "plans sampled per decision; the best by value (or first to arrive) runs", **bounds(1)},
    )
    replan_every: int | None = field(
        default=None, metadata={"help": "replan every N ticks, 0 once per episode", **bounds(0)}
    )
    stop_at_goal: float | None = field(
        default=None, metadata={"help": "cut a plan where it first comes this close to the goal, 0 never", **bounds(0)}
    )


@dataclass(frozen=True)
class PlanSampler:
    """How plans are sampled and used: DDPM over `num_inference_steps` levels (None: all) with inpainting,
    `n_samples` per decision, value guidance of `guide_scale`, a new plan every `replan_every` ticks, each
    plan cut where it first comes within `stop_at_goal` of the goal (0: never)."""

    num_inference_steps: int | None = None
    guide_scale: float = 0.0
    n_samples: int = 1
    replan_every: int = 0
    stop_at_goal: float = 0.0
    actions_per_tick: int = 1
    stateful: bool = False

    @property
    def name(self) -> str:
        name = f"diffuser-ddpm{'-' + str(self.num_inference_steps) if self.num_inference_steps else ''}"
        if self.guide_scale > 0:
            name += f"-guided{self.guide_scale:g}"
        if self.n_samples > 1:
            name += f"-best{self.n_samples}"
        if self.stop_at_goal > 0:
            name += f"-stop{self.stop_at_goal:g}"
        return name

    def chunk_length(self, horizon: int) -> int:
        return 1  # one tracked action per control tick


class DiffuserPlanner(PolicyModule):
    """Trajectory diffusion (+ value net) + normalizer + PD tracking; built from a PolicyConfig with method=diffuser."""

    def __init__(
        self,
        cfg: Any,
        obs_features: Mapping[str, Feature],
        action_feature: Feature,
        normalizer: Normalizer | None = None,
    ) -> None:
        super().__init__()
        self.options = method_options(DiffuserOptions, cfg)
        opts = self.options
        for key in (opts.state_key, opts.goal_key):
            if key and key not in obs_features:
                raise ValueError(f"diffuser: observation key {key!r} not in the task's {sorted(obs_features)}")
        self.cfg = cfg
        self.obs_features = dict(obs_features)
        self.action_feature = action_feature
        self.action_dim = int(action_feature.shape[0])
        self.state_dim = int(np.prod(obs_features[opts.state_key].shape))
        self.goal_dim = int(np.prod(obs_features[opts.goal_key].shape)) if opts.goal_key else 0
        self.normalizer = normalizer if normalizer is not None else Normalizer()
        kwargs = {**unet_presets.PRESETS[cfg.preset], **cfg.denoiser_kwargs}
        n_conditions = 2 if opts.condition_goal else 1
        cond_dim = n_conditions * self.state_dim if opts.global_conditioning else 0
        denoiser = DENOISERS["unet"](self.action_dim + self.state_dim, cond_dim, **kwargs)
        self.schedule = cfg.schedule()
        self.diffusion = TrajectoryDiffusion(
            denoiser, self.action_dim, self.state_dim, self.schedule, opts.action_weight, opts.global_conditioning
        )
        self.value = (
            TrajectoryValue(
                self.action_dim + self.state_dim,
                self.goal_dim,
                kwargs["down_dims"],
                kwargs["kernel_size"],
                kwargs["step_embed_dim"],
            )
            if opts.value_discount > 0
            else None
        )

    def data_timing(self) -> dict[str, Any]:
        """Training windows: every step's state is planned over; windows stay inside their episode."""
        timing: dict[str, Any] = {
            "horizon": self.cfg.horizon,
            "n_obs_steps": self.cfg.horizon,
            "n_action_steps": 1,
            "padding": False,
        }
        if self.value is not None:
            timing["returns_discount"] = self.options.value_discount
        return timing

    # ------------------------------------------------------------------ training
    def _trajectories(self, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.normalizer.normalize("action", actions), self.normalizer.normalize(self.options.state_key, states)],
            dim=-1,
        )

    def _conditions(self, start: torch.Tensor, end: torch.Tensor | None) -> dict[int, torch.Tensor]:
        """Normalized states to inpaint: the start, and the end when goal-conditioned."""
        if self.options.condition_goal and end is not None:
            return {0: start, self.cfg.horizon - 1: end}
        return {0: start}

    def _value_cond(self, goal: torch.Tensor | None, batch: int) -> torch.Tensor:
        """What the value net is conditioned on: the normalized goal, or nothing."""
        if not self.goal_dim or goal is None:
            return torch.zeros(batch, 0, device=self.device)
        return self.normalizer.normalize(self.options.goal_key, goal).reshape(batch, -1)

    def compute_loss(
        self, batch: Mapping[str, Any], noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss on a batch {"obs": {key: (B, H, ...)}, "action": (B, H, A)[, "return": (B,)]} of raw values."""
        x = self._trajectories(batch["action"], batch["obs"][self.options.state_key])
        conditions = self._conditions(x[:, 0, self.action_dim :], x[:, -1, self.action_dim :])
        loss = self.diffusion.loss(x, conditions, noise=noise, timesteps=timesteps)
        logs = {"diffusion_loss": loss.detach()}
        if self.value is not None:
            t = timesteps
            if t is None:
                t = torch.randint(0, self.schedule.num_train_timesteps, (x.shape[0],), device=x.device)
            noisy = inpaint(self.schedule.add_noise(x, torch.randn_like(x), t), conditions, self.action_dim)
            goal = batch["obs"][self.options.goal_key][:, 0] if self.goal_dim else None
            predicted = self.value(noisy, t, self._value_cond(goal, x.shape[0]))
            target = batch["return"].to(predicted) * (1.0 - self.options.value_discount)  # O(1) values
            value_loss = torch.nn.functional.mse_loss(predicted, target)
            logs["value_loss"] = value_loss.detach()
            loss = loss + value_loss
        logs["loss"] = loss.detach()
        return loss, logs

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
        goal: torch.Tensor | None = None,
        sampler: PlanSampler | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw start states (B, S) and goals (B, G) -> the raw plan {"action": (B, H, A), "state": (B, H, S)},
        plus "value" (B,) when the planner has a value net. Of `n_samples` plans each, the best by value, or
        without a value net the first to come within `stop_at_goal` of the goal."""
        sampler = sampler or self.default_sampler()
        key, n = self.options.state_key, sampler.n_samples
        batch = state.shape[0]
        start = self.normalizer.normalize(key, state.to(self.device).float()).repeat_interleave(n, 0)
        goal = goal.to(self.device).float().repeat_interleave(n, 0) if goal is not None else None
        end = self.normalizer.normalize(key, self.goal_state(goal)) if goal is not None and self.goal_dim else None
        cond = self._value_cond(goal, batch * n) if self.value is not None else None
        guide = None
        if self.value is not None and sampler.guide_scale > 0:
            value = self.value

            def guide(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return value(x, t, cond)

        x = self.diffusion.sample(
            self._conditions(start, end),
            self.cfg.horizon,
            batch * n,
            sampler.num_inference_steps,
            generator,
            guide,
            GuideConfig(sampler.guide_scale, self.options.n_guide_steps, self.options.t_stopgrad),
        )
        out: dict[str, torch.Tensor] = {}
        if self.value is not None:
            values = self.value(x, torch.zeros(batch * n, dtype=torch.long, device=x.device), cond).view(batch, n)
            best = values.argmax(dim=1)
            out["value"] = values[torch.arange(batch), best]
        elif n > 1 and goal is not None and self.goal_dim and sampler.stop_at_goal > 0:
            # goal reaching: a plan's sparse return is known from the plan itself, so the earliest arrival wins
            positions = self.normalizer.unnormalize(key, x[..., self.action_dim :])[..., : self.goal_dim]
            best = first_arrival(positions, goal, sampler.stop_at_goal).view(batch, n).argmin(dim=1)
        else:
            best = torch.zeros(batch, dtype=torch.long, device=x.device)  # nothing to rank by: the first sample
        x = x.view(batch, n, *x.shape[1:])[torch.arange(batch), best]
        out["action"] = self.normalizer.unnormalize("action", x[..., : self.action_dim])
        out["state"] = self.normalizer.unnormalize(key, x[..., self.action_dim :])
        return out

    # ------------------------------------------------------------------ the policy interface
    SAMPLERS: ClassVar[dict[str, type]] = {"plan": PlanOptions}

    def default_sampler_options(self) -> dict[str, Any]:
        return {"name": "plan"}

    def make_sampler(self, options: Any = None) -> PlanSampler:
        """A PlanSampler from `PlanOptions` (see `PolicyModule.sampler_options`); unset keys: the preset's."""
        chosen, preset = self.sampler_options(options), self.options

        def pick(key: str, default: Any) -> Any:
            value = getattr(chosen, key)
            return default if value is None else value

        sampler = PlanSampler(
            num_inference_steps=pick("num_inference_steps", self.cfg.num_inference_steps),
            guide_scale=float(pick("guide_scale", preset.guide_scale)),
            n_samples=int(pick("n_samples", preset.n_samples)),
            replan_every=int(pick("replan_every", preset.replan_every)),
            stop_at_goal=float(pick("stop_at_goal", preset.stop_at_goal)),
        )
        if self.value is None and sampler.guide_scale > 0:
            raise ValueError("guide_scale > 0 needs a value net: train with policy.method_kwargs.value_discount > 0")
        if self.value is None and sampler.n_samples > 1 and not (self.goal_dim and sampler.stop_at_goal > 0):
            raise ValueError(
                "n_samples > 1 needs something to rank plans by: a value net (policy.method_kwargs.value_discount > 0)"
                " or, for goal reaching, stop_at_goal > 0 (the earliest arrival)"
            )
        return sampler

    def default_sampler(self) -> PlanSampler:
        return self.make_sampler()

    def actions_per_tick(self, sampler: PlanSampler) -> int:
        return 1

    def session(self, sampler: PlanSampler | None = None, generator: torch.Generator | None = None) -> PlannerSession:
        return PlannerSession(self, sampler or self.default_sampler(), generator)

    def predict_action_chunk(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw obs {key: (B, 1, ...)} -> the planned raw actions (B, H, A) from the current state."""
        goal = obs[self.options.goal_key][:, -1] if self.options.goal_key else None
        return self.plan(obs[self.options.state_key][:, -1], goal, generator=generator)["action"]


class PlannerSession:
    """One episode of plan tracking (a `RecedingHorizon` chunk source of one action per tick)."""

    def __init__(
        self, planner: DiffuserPlanner, sampler: PlanSampler, generator: torch.Generator | None = None
    ) -> None:
        self.planner, self.sampler, self.generator = planner, sampler, generator
        self.actions_per_tick = 1
        self.network_evaluations = 0
        self.plan_ms: list[float] = []  # wall time of each (batched) planning call
        self.rows_planned = 0  # plans made, counted per environment
        self.rows_started = 0  # episodes that made their first plan, counted per environment
        self.reset()

    def reset(self) -> None:
        self.plan: np.ndarray | None = None  # (B, H, S) raw planned states
        self.t = np.zeros(0, int)  # per environment: index of the current step in its plan

    def eval_fields(self) -> dict[str, float]:
        """Planning cost for eval.json: wall time per planning call (all environments of a batch at once)
        and plans per episode."""
        return {
            "plan_ms_p50": float(np.percentile(self.plan_ms, 50)) if self.plan_ms else 0.0,
            "plan_ms_mean": float(np.mean(self.plan_ms)) if self.plan_ms else 0.0,
            "plans_per_episode": self.rows_planned / max(1, self.rows_started),
        }

    def _replan(self, state: np.ndarray, goal: np.ndarray | None, rows: np.ndarray) -> None:
        start = time.perf_counter()
        planned = self.planner.plan(
            torch.as_tensor(state[rows]),
            None if goal is None else torch.as_tensor(goal[rows]),
            self.sampler,
            self.generator,
        )["state"]
        self.plan_ms.append((time.perf_counter() - start) * 1000)
        planned = planned.cpu().numpy()
        if goal is not None and self.sampler.stop_at_goal > 0:
            planned = self._cut_at_goal(planned, goal[rows])
        self.rows_planned += len(rows)
        if self.plan is None:
            self.rows_started += len(rows)
            self.plan, self.t = planned, np.zeros(len(state), int)
        else:
            self.plan[rows], self.t[rows] = planned, 0
        steps = self.sampler.num_inference_steps or self.planner.schedule.num_train_timesteps
        per_step = 1 + (2 * self.planner.options.n_guide_steps if self.sampler.guide_scale > 0 else 0)
        self.network_evaluations += steps * per_step * self.sampler.n_samples

    def _cut_at_goal(self, planned: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """From each plan's first state within `stop_at_goal` of its goal on, the goal at rest: Diffuser's
        plans reach the goal where the data would and often walk on past it; the end of the horizon only
        brings them back."""
        at_rest = self.planner.goal_state(torch.as_tensor(goal)).numpy()
        first = first_arrival(
            torch.as_tensor(planned[..., : goal.shape[1]]), torch.as_tensor(goal), self.sampler.stop_at_goal
        )
        cut = np.arange(planned.shape[1])[None] >= first.numpy()[:, None]
        return np.where(cut[..., None], at_rest[:, None], planned)

    def __call__(self, history: Mapping[str, np.ndarray]) -> np.ndarray:
        opts = self.planner.options
        state = history[opts.state_key][:, -1]
        goal = history[opts.goal_key][:, -1] if opts.goal_key else None
        everyone = np.arange(len(state))
        if self.plan is None or (self.sampler.replan_every and self.t[0] >= self.sampler.replan_every):
            self._replan(state, goal, everyone)
        g = self.planner.goal_dim or self.planner.state_dim // 2  # position dims (state = [position, velocity])
        if opts.replan_distance > 0:
            planned_now = self.plan[everyone, np.minimum(self.t, self.plan.shape[1] - 1)]
            drifted = np.flatnonzero(np.linalg.norm(planned_now[:, :g] - state[:, :g], axis=1) > opts.replan_distance)
            if len(drifted):
                self._replan(state, goal, drifted)
        target = self.plan[everyone, np.minimum(self.t + 1, self.plan.shape[1] - 1)]
        action = opts.kp * (target[:, :g] - state[:, :g]) + opts.kd * (target[:, g:] - state[:, g:])
        self.t += 1
        return action[:, None].astype(np.float32)
