"""Chunk samplers: denoise a whole action chunk from pure noise with DDPM or DDIM (Diffusion Policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from policy.samplers.base import Denoiser, SamplerState
from policy.schedulers import DDIMScheduler, DDPMScheduler


def reverse_steps(
    scheduler: DDPMScheduler | DDIMScheduler,
    denoiser: Denoiser,
    cond: torch.Tensor,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Run reverse steps from `x` over descending `timesteps` (the last one goes to clean); noise[i] for step i."""
    batch = x.shape[0]
    prev_timesteps = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
    for i in range(len(timesteps)):
        t, prev = timesteps[i].expand(batch), prev_timesteps[i].expand(batch)
        x = scheduler.step(denoiser(x, t, cond), t, prev, x, noise[i]).prev_sample
    return x


@dataclass(frozen=True)
class ChunkSampler:
    """Every tick starts from pure noise and runs `num_inference_steps` reverse steps; no state.

    noise[0] is the initial sample x_T; noise[i + 1] is the noise of reverse step i (unused, and may be
    zeros, for deterministic DDIM). `actions_per_tick` None executes the policy's n_action_steps.
    """

    scheduler: DDPMScheduler | DDIMScheduler
    num_inference_steps: int
    actions_per_tick: int | None = None
    spacing: str = "leading"  # of the inference timesteps, see `policy.schedulers.spaced_timesteps`

    stateful: ClassVar[bool] = False  # carries state between ticks (its first tick differs)

    @property
    def name(self) -> str:
        kind = "ddpm" if isinstance(self.scheduler, DDPMScheduler) else "ddim"
        return f"{kind}-{self.num_inference_steps}"

    @property
    def nfe_per_chunk(self) -> int:
        return self.num_inference_steps

    def chunk_length(self, horizon: int) -> int:
        """Length of the chunk `tick` returns (from the window's first position)."""
        return horizon

    def nfe(self, state: SamplerState) -> int:
        return self.num_inference_steps

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: SamplerState = None) -> tuple[int, ...]:
        return (self.num_inference_steps + 1, batch, horizon, action_dim)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Normalized chunk (B, T, Da) from noise of `noise_shape`."""
        timesteps = self.scheduler.timesteps(self.num_inference_steps, self.spacing).to(cond.device)
        return reverse_steps(self.scheduler, denoiser, cond, noise[0], timesteps, noise[1:])

    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        return self.sample(denoiser, cond, noise), None
