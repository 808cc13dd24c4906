"""Chunk samplers: denoise a whole action chunk from pure noise with DDPM or DDIM (Diffusion Policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from policy.samplers.base import Denoiser, SamplerState
from policy.schedulers import DDIMScheduler, DDPMScheduler, previous_timestep


@dataclass(frozen=True)
class ChunkSampler:
    """Every tick starts from pure noise and runs `num_inference_steps` reverse steps; no state.

    noise[0] is the initial sample x_T; noise[i + 1] is the noise of reverse step i (unused, and may be
    zeros, for deterministic DDIM). `actions_per_tick` None executes the policy's n_action_steps.
    """

    scheduler: DDPMScheduler | DDIMScheduler
    num_inference_steps: int
    actions_per_tick: int | None = None

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
        timesteps = self.scheduler.timesteps(self.num_inference_steps).to(cond.device)
        x = noise[0]
        batch = x.shape[0]
        for i, t in enumerate(timesteps):
            t_batch = t.expand(batch)
            prev = torch.full_like(t_batch, previous_timestep(timesteps, i))
            x = self.scheduler.step(denoiser(x, t_batch, cond), t_batch, prev, x, noise[i + 1]).prev_sample
        return x

    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        return self.sample(denoiser, cond, noise), None
