"""Conditional 1-d temporal U-Net with FiLM (Diffusion Policy's ConditionalUnet1D, Chi et al. 2023).

Residual blocks: Conv1d -> GroupNorm(8) -> Mish, twice, with FiLM (per-channel scale and bias
predicted from [timestep embedding, observation features]) after the first conv. Down: stride-2
Conv1d; up: ConvTranspose1d. With per-position timesteps (B, T) the FiLM parameters vary along time
and are average-pooled to each level's length.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from dpstack.policy.denoisers.embeddings import check_denoiser_inputs, timestep_mlp
from dpstack.policy.denoisers.mish import Mish

PRESETS = {
    # Diffusion Policy's low-dim config (65.8 M parameters with Push-T shapes)
    "lowdim": {"down_dims": (256, 512, 1024), "kernel_size": 5, "step_embed_dim": 256},
    # Diffusion Policy's image config
    "image": {"down_dims": (512, 1024, 2048), "kernel_size": 5, "step_embed_dim": 128},
    # small and fast for CPU control (~4.5 M parameters)
    "small": {"down_dims": (64, 128, 256), "kernel_size": 5, "step_embed_dim": 128},
    # Diffuser's temporal U-Net (dim 32, dim_mults 1, 2, 4, 8) for trajectory planning
    "diffuser": {"down_dims": (32, 64, 128, 256), "kernel_size": 5, "step_embed_dim": 32},
    # tiny, for tests
    "tiny": {"down_dims": (16, 32), "kernel_size": 3, "step_embed_dim": 16},
}


def _conv_block(cin: int, cout: int, kernel: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), Mish())


class ResidualFiLMBlock(nn.Module):
    """Two conv blocks with FiLM from the conditioning after the first, plus a residual (1x1 conv when widths differ)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _conv_block(cin, cout, kernel, groups)
        self.conv2 = _conv_block(cout, cout, kernel, groups)
        self.film = nn.Sequential(Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, L); cond: (B, Tc, cond_dim) with Tc = 1 or a multiple of L."""
        film = self.film(cond).transpose(1, 2)  # (B, 2 Cout, Tc)
        if film.shape[-1] not in (1, x.shape[-1]):
            film = F.avg_pool1d(film, film.shape[-1] // x.shape[-1])
        scale, bias = film.chunk(2, dim=1)
        out = self.conv1(x) * scale + bias
        return self.conv2(out) + self.skip(x)


def down_levels(in_dim: int, down_dims: tuple[int, ...], film_dim: int, kernel: int, groups: int) -> nn.ModuleList:
    """The U-Net's down path: per level two FiLM residual blocks, then a stride-2 conv (none after the last)."""
    levels = nn.ModuleList()
    for i, (cin, cout) in enumerate(itertools.pairwise([in_dim, *down_dims])):
        last = i == len(down_dims) - 1
        levels.append(
            nn.ModuleList(
                [
                    ResidualFiLMBlock(cin, cout, film_dim, kernel, groups),
                    ResidualFiLMBlock(cout, cout, film_dim, kernel, groups),
                    nn.Conv1d(cout, cout, 3, 2, 1) if not last else nn.Identity(),
                ]
            )
        )
    return levels


class ConditionalUnet1D(nn.Module):
    """eps_theta(sample (B, T, Da), timesteps (B,) | (B, T), cond (B, C)) -> (B, T, Da).

    T must be divisible by 2^(len(down_dims) - 1).
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        step_embed_dim: int = 256,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        self.action_dim, self.cond_dim = action_dim, cond_dim
        self.levels = len(down_dims)
        self.step_encoder = timestep_mlp(step_embed_dim)
        film_dim = step_embed_dim + cond_dim
        self.down = down_levels(action_dim, down_dims, film_dim, kernel_size, n_groups)
        mid = down_dims[-1]
        self.mid = nn.ModuleList([ResidualFiLMBlock(mid, mid, film_dim, kernel_size, n_groups) for _ in range(2)])
        self.up = nn.ModuleList()
        # each up level joins the skip of the same resolution, then doubles the length back
        for cout, cin in zip(reversed(down_dims[:-1]), reversed(down_dims[1:]), strict=True):
            self.up.append(
                nn.ModuleList(
                    [
                        ResidualFiLMBlock(cin * 2, cout, film_dim, kernel_size, n_groups),
                        ResidualFiLMBlock(cout, cout, film_dim, kernel_size, n_groups),
                        nn.ConvTranspose1d(cout, cout, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            _conv_block(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_denoiser_inputs(sample, timesteps, cond, "ConditionalUnet1D")
        horizon = sample.shape[1]
        if horizon % (2 ** (self.levels - 1)):
            raise ValueError(f"ConditionalUnet1D: horizon {horizon} must be divisible by {2 ** (self.levels - 1)}")
        emb = self.step_encoder(timesteps)  # (B, E) or (B, T, E)
        if emb.ndim == 2:
            film = torch.cat([emb, cond], dim=-1)[:, None]  # (B, 1, E + C)
        else:
            film = torch.cat([emb, cond[:, None].expand(-1, horizon, -1)], dim=-1)  # (B, T, E + C)
        x = sample.transpose(1, 2)  # (B, Da, T)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, film), film)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, film)
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(block2(block1(x, film), film))
        return self.final(x).transpose(1, 2)
