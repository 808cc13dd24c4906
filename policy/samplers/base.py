"""The sampler interface: a strategy that turns one denoiser into actions, one control tick at a time.

Every sampler is a frozen dataclass (pure, shareable across threads and episodes) with:

    sampler.name                       e.g. "ddpm-100", "ddim-10", "streaming-15", "rti-2,1,0"
    sampler.actions_per_tick           actions executed per tick (None: the policy's n_action_steps)
    sampler.stateful                   whether it carries state between ticks (then its first tick differs)
    sampler.noise_shape(B, T, Da, state) -> shape of the noise one tick consumes
    sampler.nfe(state)                 network evaluations that tick costs
    sampler.chunk_length(T)            length of the chunk a tick returns
    sampler.tick(denoiser, cond (B, C), state, noise) -> (chunk (B, T', Da) normalized, new state)

`state` is None at the start of an episode (so a reset is "forget the state") and otherwise a dict of
tensors the sampler carries between ticks. The returned chunk starts at the window's first position
(the oldest observed step); its executable actions start at index n_obs_steps - 1. All randomness
comes in through `noise`, drawn by the caller, so a run is replayable and the same objects serve
evaluation, ONNX export and the ROS node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dpstack.policy.schedulers import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SamplerState = dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class SamplerWindow:
    """What a sampler is laid out for: the policy's noise schedule and action window.

    Each sampler's options dataclass (``DDPMOptions``, ``StreamingOptions``, ...) builds its sampler
    with ``options.build(window)``.
    """

    schedule: NoiseSchedule
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    discrete_dims: tuple[int, ...] = ()
