"""Consistency sampling (Consistency Policy, Prasad et al. 2024): one or a few calls of a distilled student.

The student (`dpstack distill`, see `policy/consistency.py`) is an epsilon denoiser whose consistency
function maps a noisy chunk at any level straight to a clean one (Latent Consistency Models' boundary
parameterization, t' = t + 1 so that t = -1 is clean):

    f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)
    c_skip = sigma_d^2 / ((s t')^2 + sigma_d^2),   c_out = s t' / sqrt((s t')^2 + sigma_d^2)

f is exactly the identity on clean samples and x0_hat elsewhere (s = 10, sigma_d = 0.5). Sampling over
descending `timesteps` (multistep consistency sampling): x0 = f(x_T, t_1); then for each later t_i,
x0 = f(add_noise(x0, z_i, t_i), t_i). Stateless: one chunk per tick, like DDIM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dpstack.bounds import bounds
from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.schedulers import NoiseSchedule

SIGMA_DATA = 0.5
TIMESTEP_SCALE = 10.0


def boundary_coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of integer timesteps t (-1 = clean): (1, 0) at t = -1, about (0, 1) from t = 0 on."""
    scaled = TIMESTEP_SCALE * (t.double() + 1)
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip.float(), c_out.float()


def consistency_function(
    schedule: NoiseSchedule, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """f(x_t, t): the clean-sample estimate of a consistency model from its denoiser output at (x_t, t)."""
    x0 = schedule.predict_original(model_output, t.clamp(min=0), sample)
    c_skip, c_out = (c.reshape(*c.shape, *([1] * (sample.ndim - c.ndim))) for c in boundary_coefficients(t))
    return c_skip.to(sample) * sample + c_out.to(sample) * x0


@dataclass(frozen=True)
class ConsistencySampler:
    """Every tick: len(timesteps) calls from pure noise. noise[0] is x_T, noise[i] re-noises before call i."""

    schedule: NoiseSchedule
    timesteps: tuple[int, ...]
    actions_per_tick: int | None = None

    stateful: ClassVar[bool] = False

    def __post_init__(self) -> None:
        n = self.schedule.num_train_timesteps
        steps = list(self.timesteps)
        if not steps or steps != sorted(set(steps), reverse=True) or steps[0] >= n or steps[-1] < 0:
            raise ValueError(f"consistency: timesteps must be strictly descending in [0, {n}), got {steps}")

    @property
    def name(self) -> str:
        return f"consistency-{len(self.timesteps)}"

    def chunk_length(self, horizon: int) -> int:
        return horizon

    def nfe(self, state: SamplerState) -> int:
        return len(self.timesteps)

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: SamplerState = None) -> tuple[int, ...]:
        return (len(self.timesteps), batch, horizon, action_dim)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        batch = cond.shape[0]
        x0 = noise[0]
        for i, level in enumerate(self.timesteps):
            t = torch.full((batch,), level, dtype=torch.long, device=cond.device)
            x = noise[0] if i == 0 else self.schedule.add_noise(x0, noise[i], t)
            x0 = consistency_function(self.schedule, denoiser(x, t, cond), t, x)
        return x0.clamp(-1, 1)

    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        return self.sample(denoiser, cond, noise), None


@dataclass
class ConsistencyOptions:
    """`sampler=consistency`: one or a few calls of a consistency-distilled policy (`dpstack distill`)."""

    name: str = "consistency"
    timesteps: list[int] = field(
        default_factory=lambda: [90], metadata={"help": "descending levels, one call each ([90]: one call)"}
    )
    actions_per_tick: int | None = field(
        default=None, metadata={"help": "actions executed per tick (None: the policy's n_action_steps)", **bounds(1)}
    )

    def build(self, window: SamplerWindow) -> ConsistencySampler:
        return ConsistencySampler(window.schedule, tuple(self.timesteps), self.actions_per_tick)
