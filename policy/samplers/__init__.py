"""Samplers: strategies over one denoiser interface (see `base.py`); this module is their registry.

    ddpm       full ancestral DDPM over every training level (Diffusion Policy's default)
    ddim       deterministic DDIM over k levels
    streaming  Streaming Diffusion Policy: rolling buffer with rising noise (needs streaming training)
    rti        Real-Time Iteration warm start: previous chunk shifted, a few refinement steps (training-free)
    consistency  one or a few calls of a consistency-distilled student (Consistency Policy; `dpstack distill`)

Each sampler owns its typed options (a dataclass next to it: `DDPMOptions`, `DDIMOptions`,
`StreamingOptions`, `RTIOptions`, `ConsistencyOptions`) whose ``build(window)`` lays the sampler out for a policy's window.
`configs/sampler/<name>.yaml` holds each one's defaults; `dpstack eval sampler=<name>` picks one. Adding
a sampler costs one module (the sampler and its options), one line here and one YAML file.
"""

from __future__ import annotations

from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.samplers.chunk import ChunkSampler, DDIMOptions, DDPMOptions, make_sampler
from dpstack.policy.samplers.consistency import ConsistencyOptions, ConsistencySampler
from dpstack.policy.samplers.rti import RTIOptions, RTISampler
from dpstack.policy.samplers.streaming import StreamingOptions, StreamingSampler, StreamLayout

Sampler = ChunkSampler | StreamingSampler | RTISampler | ConsistencySampler
SamplerOptions = DDPMOptions | DDIMOptions | StreamingOptions | RTIOptions | ConsistencyOptions
SAMPLERS: dict[str, type[SamplerOptions]] = {
    "ddpm": DDPMOptions,
    "ddim": DDIMOptions,
    "streaming": StreamingOptions,
    "rti": RTIOptions,
    "consistency": ConsistencyOptions,
}

# Layouts whose every tick (an episode's first included) makes at most one denoiser call.
ONE_CALL_LAYOUTS = (
    "per-action streaming: policy=unet-streaming-per-action (n_action_steps=1), sampler=streaming "
    "sampler.start_steps=1 (one call and one action per tick)",
    "rti with one refinement step: sampler=rti sampler.timesteps=[k] sampler.first=ddim "
    "sampler.num_inference_steps=1 (one call and one action per tick)",
    "consistency-1 on a distilled policy (dpstack distill), or ddim-1: one call per chunk, the other ticks pop",
)


def max_calls_per_tick(sampler: Sampler) -> int:
    """The most denoiser calls any one tick of `sampler` makes (an episode's first tick included)."""
    return max(sampler.nfe(None), sampler.nfe({}) if sampler.stateful else 0)


__all__ = [
    "ONE_CALL_LAYOUTS",
    "SAMPLERS",
    "ChunkSampler",
    "ConsistencyOptions",
    "ConsistencySampler",
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
    "max_calls_per_tick",
]
