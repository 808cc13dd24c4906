"""Samplers: strategies that turn a denoiser into an action chunk, all over one denoiser interface.

A sampler takes the denoiser, the conditioning vector and *all* the noise it will use (drawn by the
caller), so a run is reproducible and the same object serves evaluation, ONNX export and the ROS node.

    sampler.noise_shape(batch, horizon, action_dim) -> shape of the noise tensor to draw
    sampler.sample(denoiser, cond (B, C), noise) -> normalized action chunk (B, T, Da)
    sampler.nfe_per_chunk -> network evaluations per chunk
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from policy.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule, previous_timestep

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChunkSampler:
    """Denoise a whole chunk from pure noise with DDPM or DDIM over `num_inference_steps` levels.

    noise[0] is the initial sample x_T; noise[i + 1] is the noise of reverse step i (unused, and may be
    zeros, for deterministic DDIM).
    """

    scheduler: DDPMScheduler | DDIMScheduler
    num_inference_steps: int

    @property
    def name(self) -> str:
        kind = "ddpm" if isinstance(self.scheduler, DDPMScheduler) else "ddim"
        return f"{kind}-{self.num_inference_steps}"

    @property
    def nfe_per_chunk(self) -> int:
        return self.num_inference_steps

    def noise_shape(self, batch: int, horizon: int, action_dim: int) -> tuple[int, ...]:
        return (self.num_inference_steps + 1, batch, horizon, action_dim)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        timesteps = self.scheduler.timesteps(self.num_inference_steps).to(cond.device)
        x = noise[0]
        batch = x.shape[0]
        for i, t in enumerate(timesteps):
            t_batch = t.expand(batch)
            prev = torch.full_like(t_batch, previous_timestep(timesteps, i))
            x = self.scheduler.step(denoiser(x, t_batch, cond), t_batch, prev, x, noise[i + 1]).prev_sample
        return x


def make_sampler(
    name: str, schedule: NoiseSchedule, num_inference_steps: int | None = None, eta: float = 0.0
) -> ChunkSampler:
    """ "ddpm" (all training levels by default) or "ddim" (10 steps by default)."""
    if name == "ddpm":
        return ChunkSampler(DDPMScheduler(schedule), num_inference_steps or schedule.num_train_timesteps)
    if name == "ddim":
        return ChunkSampler(DDIMScheduler(schedule, eta=eta), num_inference_steps or 10)
    raise ValueError(f"unknown sampler {name!r}; choose ddpm or ddim")
