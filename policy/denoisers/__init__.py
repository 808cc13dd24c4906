"""Denoisers: networks eps_theta(noisy_actions, timesteps, cond) -> prediction, all with one interface.

    forward(sample: (B, T, Da), timesteps: (B,) or (B, T) integer levels, cond: (B, C)) -> (B, T, Da)

`cond` is the flattened observation features (global conditioning). Per-position timesteps (B, T)
let the streaming sampler keep a different noise level at each action position.
"""

from dpstack.policy.denoisers.mlp import MLPDenoiser
from dpstack.policy.denoisers.transformer import TransformerDenoiser
from dpstack.policy.denoisers.unet1d import ConditionalUnet1D

DENOISERS = {"unet": ConditionalUnet1D, "transformer": TransformerDenoiser, "mlp": MLPDenoiser}

__all__ = ["DENOISERS", "ConditionalUnet1D", "MLPDenoiser", "TransformerDenoiser"]
