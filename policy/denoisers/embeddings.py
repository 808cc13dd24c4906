"""Timestep embeddings shared by every denoiser."""

from __future__ import annotations

import math

import torch
from torch import nn

from dpstack.policy.denoisers.mish import Mish


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of integer timesteps: (...,) -> (..., dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer(
            "freqs", torch.exp(torch.arange(half) * -(math.log(10000.0) / (half - 1))), persistent=False
        )

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        angles = timesteps.float()[..., None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def timestep_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal features -> MLP (Diffusion Policy's diffusion-step encoder)."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), Mish(), nn.Linear(dim * 4, dim))


def check_denoiser_inputs(sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None, name: str) -> None:
    """Shape checks with messages that say what was expected (wrong shapes are the common bug)."""
    if sample.ndim != 3:
        raise ValueError(f"{name}: sample must be (B, T, Da), got shape {tuple(sample.shape)}")
    batch, horizon = sample.shape[:2]
    if timesteps.shape not in ((batch,), (batch, horizon)):
        raise ValueError(
            f"{name}: timesteps must be ({batch},) or ({batch}, {horizon}), got shape {tuple(timesteps.shape)}"
        )
    if cond is not None and (cond.ndim != 2 or cond.shape[0] != batch):
        raise ValueError(f"{name}: cond must be ({batch}, C), got shape {tuple(cond.shape)}")
