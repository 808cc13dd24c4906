"""Diffuser: a Gaussian diffusion model over whole state-action trajectories, conditioned by inpainting.

A trajectory is a (B, H, action_dim + state_dim) tensor in normalized units, actions first (Janner et
al. 2022). Conditioning fixes the state part of chosen time indices (the current state at 0; for
goal-reaching also the goal at H - 1): `inpaint` overwrites them after the initial noise, after every
reverse step and, in training, in the noised input (those entries are left out of the loss, so the
network never learns to denoise what is given).

The noise schedule and the reverse step are the project's (`dpstack.policy.schedulers`), so the planner and
the policies share one set of diffusion math. Value guidance (Diffuser section 3.3) is an optional
`guide`: a differentiable value of the noisy trajectory x_t whose gradient, scaled by the step's
posterior variance, moves x_t before each reverse step (`n_guide_steps` times, none below `t_stopgrad`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dpstack.policy.schedulers import DDPMScheduler, NoiseSchedule

Conditions = Mapping[int, torch.Tensor]  # time index -> normalized state (B, state_dim)
Guide = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (trajectories, timesteps) -> value (B,)


def inpaint(x: torch.Tensor, conditions: Conditions, action_dim: int) -> torch.Tensor:
    """A copy of `x` whose state part at each conditioned time index holds the given state."""
    x = x.clone()
    for index, state in conditions.items():
        if state.shape != (x.shape[0], x.shape[2] - action_dim):
            raise ValueError(
                f"condition at index {index}: state shape {tuple(state.shape)}, expected "
                f"({x.shape[0]}, {x.shape[2] - action_dim})"
            )
        x[:, index, action_dim:] = state.to(x.dtype)
    return x


@dataclass(frozen=True)
class GuideConfig:
    """Value guidance: `n_guide_steps` gradient steps of size `scale` * posterior variance per reverse step,
    none at timesteps below `t_stopgrad`."""

    scale: float = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2


class TrajectoryDiffusion(nn.Module):
    """eps_theta over trajectories + the DDPM reverse process with inpainting (and optional guidance).

    Args:
        denoiser: (x (B, H, D), timesteps (B,), cond (B, C)) -> (B, H, D), e.g. a `ConditionalUnet1D`
            (Diffuser's temporal U-Net) with C = 0, or n_conditions * state_dim with global_conditioning.
        action_dim, state_dim: the trajectory's columns are [actions, states].
        schedule: the forward process (shared vocabulary with the policies).
        action_weight: loss weight of the first action (Diffuser weighs it 10x: it is what gets executed).
        global_conditioning: also feed the conditioned states (in time-index order) to the denoiser as
            its global FiLM condition, whose width must then be n_conditions * state_dim. Inpainting alone
            is Diffuser; on a CPU budget of thousands rather than millions of steps the denoiser has not
            learned to tie the states next to an inpainted one to it, and plans jump away from the start.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        action_dim: int,
        state_dim: int,
        schedule: NoiseSchedule,
        action_weight: float = 10.0,
        global_conditioning: bool = False,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.action_dim, self.state_dim = action_dim, state_dim
        self.schedule = schedule
        self.action_weight = action_weight
        self.global_conditioning = global_conditioning

    @property
    def transition_dim(self) -> int:
        return self.action_dim + self.state_dim

    def _cond(self, x: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """The denoiser's global condition: the conditioned states in time-index order, or none."""
        if not self.global_conditioning:
            return x.new_zeros(x.shape[0], 0)
        return torch.cat([conditions[i].to(x.dtype) for i in sorted(conditions)], dim=-1)

    def loss(
        self,
        trajectories: torch.Tensor,
        conditions: Conditions,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising loss on clean normalized `trajectories` (B, H, D), with `conditions` inpainted."""
        batch = trajectories.shape[0]
        t = timesteps
        if t is None:
            t = torch.randint(0, self.schedule.num_train_timesteps, (batch,), generator=generator).to(
                trajectories.device
            )
        if noise is None:
            noise = torch.randn(trajectories.shape, generator=generator).to(trajectories)
        noisy = inpaint(self.schedule.add_noise(trajectories, noise, t), conditions, self.action_dim)
        predicted = self.denoiser(noisy, t, self._cond(trajectories, conditions))
        error = (predicted - self.schedule.training_target(trajectories, noise)) ** 2
        weights = torch.ones_like(trajectories[0])
        weights[0, : self.action_dim] = self.action_weight
        for index in conditions:
            weights[index, self.action_dim :] = 0.0  # given, not predicted
        return (error * weights).sum() / (weights.sum() * batch)

    def sample(
        self,
        conditions: Conditions,
        horizon: int,
        batch: int,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        guide: Guide | None = None,
        guide_config: GuideConfig = GuideConfig(),
    ) -> torch.Tensor:
        """Reverse DDPM from pure noise to a (batch, horizon, D) normalized trajectory honouring `conditions`."""
        scheduler = DDPMScheduler(self.schedule)
        device = next(self.parameters()).device
        shape = (batch, horizon, self.transition_dim)
        x = inpaint(torch.randn(shape, generator=generator).to(device), conditions, self.action_dim)
        cond = self._cond(x, conditions)
        timesteps = scheduler.timesteps(num_inference_steps)
        for i, step_t in enumerate(timesteps.tolist()):
            t = torch.full((batch,), step_t, dtype=torch.long, device=device)
            prev_t = torch.full_like(t, timesteps[i + 1].item() if i + 1 < len(timesteps) else -1)
            if guide is not None and step_t >= guide_config.t_stopgrad:
                # Diffuser's guided step: climb the value of x_t, in steps scaled by the step's posterior variance
                variance = scheduler.variance(t, prev_t, x)
                for _ in range(guide_config.n_guide_steps):
                    with torch.enable_grad():
                        probe = x.detach().requires_grad_(True)
                        (grad,) = torch.autograd.grad(guide(probe, t).sum(), probe)
                    x = inpaint(x + guide_config.scale * variance * grad, conditions, self.action_dim)
            with torch.no_grad():
                out = scheduler.step(self.denoiser(x, t, cond), t, prev_t, x, None)
            noise = torch.randn(shape, generator=generator).to(device) if prev_t[0] >= 0 else None
            x = inpaint(out.mean if noise is None else out.mean + out.std * noise, conditions, self.action_dim)
        return x
