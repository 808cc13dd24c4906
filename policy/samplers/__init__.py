"""Samplers: strategies over one denoiser interface (see `base.py`); this module is their registry.

    ddpm       full ancestral DDPM over every training level (Diffusion Policy's default)
    ddim       deterministic DDIM over k levels
    streaming  Streaming Diffusion Policy: rolling buffer with rising noise (needs streaming training)
    rti        Real-Time Iteration warm start: previous chunk shifted, a few refinement steps (training-free)

Each sampler owns its typed options (a dataclass next to it: `DDPMOptions`, `DDIMOptions`,
`StreamingOptions`, `RTIOptions`) whose ``build(window)`` lays the sampler out for a policy's window.
`configs/sampler/<name>.yaml` holds each one's defaults; `dpstack eval sampler=<name>` picks one. Adding
a sampler costs one module (the sampler and its options), one line here and one YAML file.
"""

from __future__ import annotations

from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.samplers.chunk import ChunkSampler, DDIMOptions, DDPMOptions, make_sampler
from dpstack.policy.samplers.rti import RTIOptions, RTISampler
from dpstack.policy.samplers.streaming import StreamingOptions, StreamingSampler, StreamLayout

Sampler = ChunkSampler | StreamingSampler | RTISampler
SamplerOptions = DDPMOptions | DDIMOptions | StreamingOptions | RTIOptions
SAMPLERS: dict[str, type[SamplerOptions]] = {
    "ddpm": DDPMOptions,
    "ddim": DDIMOptions,
    "streaming": StreamingOptions,
    "rti": RTIOptions,
}

__all__ = [
    "SAMPLERS",
    "ChunkSampler",
    "DDIMOptions",
    "DDPMOptions",
    "Denoiser",
    "RTIOptions",
    "RTISampler",
    "Sampler",
    "SamplerOptions",
    "SamplerState",
    "SamplerWindow",
    "StreamLayout",
    "StreamingOptions",
    "StreamingSampler",
    "make_sampler",
]
