"""Time-series transformer denoiser (after Diffusion Policy's TransformerForDiffusion).

Action positions are decoder tokens with causal self-attention; the observation features, split into
`n_cond_tokens` tokens (one per observed step), are the memory they cross-attend to. The timestep
embedding is added to every action token, so one level per sample (B,) and one per position (B, T)
are handled the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from dpstack.policy.denoisers.embeddings import SinusoidalEmbedding, check_denoiser_inputs
from dpstack.policy.denoisers.mish import Mish

PRESETS = {
    "lowdim": {"n_layer": 8, "n_head": 4, "n_emb": 256},  # Diffusion Policy's low-dim Push-T config
    "small": {"n_layer": 4, "n_head": 4, "n_emb": 128},
    "tiny": {"n_layer": 1, "n_head": 2, "n_emb": 32},
}


class TransformerDenoiser(nn.Module):
    """eps_theta(sample (B, T, Da), timesteps (B,) | (B, T), cond (B, C)) -> (B, T, Da); C % n_cond_tokens == 0."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        horizon: int = 16,
        n_cond_tokens: int = 1,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        dropout: float = 0.0,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if cond_dim % n_cond_tokens:
            raise ValueError(f"cond_dim {cond_dim} must be divisible by n_cond_tokens {n_cond_tokens}")
        self.action_dim, self.cond_dim, self.horizon, self.n_cond_tokens = action_dim, cond_dim, horizon, n_cond_tokens
        self.action_in = nn.Linear(action_dim, n_emb)
        self.time_emb = nn.Sequential(SinusoidalEmbedding(n_emb), nn.Linear(n_emb, n_emb))
        self.position = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.cond_in = nn.Linear(cond_dim // n_cond_tokens, n_emb)
        self.cond_position = nn.Parameter(torch.zeros(1, n_cond_tokens, n_emb))
        self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(
            n_emb, n_head, 4 * n_emb, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.norm = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        mask = (
            torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1)
            if causal
            else torch.zeros(horizon, horizon)
        )
        self.register_buffer("causal_mask", mask, persistent=False)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.cond_position, std=0.02)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_denoiser_inputs(sample, timesteps, cond, "TransformerDenoiser")
        batch, horizon = sample.shape[:2]
        if horizon > self.horizon:
            raise ValueError(f"TransformerDenoiser: horizon {horizon} exceeds the trained maximum {self.horizon}")
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(batch, horizon)
        tokens = self.action_in(sample) + self.time_emb(timesteps) + self.position[:, :horizon]
        memory = self.cond_in(cond.reshape(batch, self.n_cond_tokens, -1)) + self.cond_position
        memory = self.encoder(memory)
        out = self.decoder(tokens, memory, tgt_mask=self.causal_mask[:horizon, :horizon])
        return self.head(self.norm(out))
