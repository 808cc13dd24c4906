"""Samplers: strategies over one denoiser interface (see `base.py`), chosen by a `SamplerConfig`.

    ddpm       full ancestral DDPM over every training level (Diffusion Policy's default)
    ddim       deterministic DDIM over k levels
    streaming  Streaming Diffusion Policy: rolling buffer with rising noise (needs streaming training)
    rti        Real-Time Iteration warm start: previous chunk shifted, a few refinement steps (training-free)

`configs/sampler/<name>.yaml` holds each one's defaults; `dpstack eval sampler=<name>` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.samplers.base import Denoiser, SamplerState
from policy.samplers.chunk import ChunkSampler
from policy.samplers.rti import RTISampler
from policy.samplers.streaming import StreamingSampler, StreamLayout
from policy.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule

Sampler = ChunkSampler | StreamingSampler | RTISampler
SAMPLERS = ("ddpm", "ddim", "streaming", "rti")

__all__ = [
    "SAMPLERS",
    "ChunkSampler",
    "Denoiser",
    "RTISampler",
    "Sampler",
    "SamplerConfig",
    "SamplerState",
    "StreamLayout",
    "StreamingSampler",
    "build_sampler",
    "make_sampler",
]


@dataclass
class SamplerConfig:
    """`configs/sampler/<name>.yaml`: which sampler and its options."""

    name: str | None = field(default=None, metadata={"help": "ddpm | ddim | streaming | rti (None: the policy's)"})
    num_inference_steps: int | None = field(
        default=None,
        metadata={
            "help": "levels: ddpm all training levels, ddim 10, streaming one call per executed action, "
            "rti the first tick's full sampler"
        },
    )
    eta: float = field(default=0.0, metadata={"help": "DDIM stochasticity (0: deterministic)"})
    timesteps: list[int] = field(default_factory=lambda: [2, 1, 0], metadata={"help": "rti: refinement timesteps"})
    first: str = field(default="ddpm", metadata={"help": "rti: sampler of an episode's first tick (ddpm | ddim)"})
    actions_per_tick: int | None = field(
        default=None, metadata={"help": "actions executed per tick (None: rti 1, ddpm/ddim the policy's)"}
    )
    discrete_dims: list[int] | None = field(
        default=None, metadata={"help": "rti: discrete action dims scaled in the warm start (None: the task's)"}
    )
    discrete_scale: float = field(default=0.1, metadata={"help": "rti: scale of discrete dims in the warm start"})
    guide_scale: float | None = field(
        default=None, metadata={"help": "planner: value-guidance scale, 0 unguided (None: the planner's)"}
    )
    n_samples: int | None = field(
        default=None,
        metadata={"help": "planner: plans sampled per decision, the best by value runs (None: the planner's)"},
    )
    replan_every: int | None = field(
        default=None, metadata={"help": "planner: replan every N ticks, 0 once per episode (None: the planner's)"}
    )
    stop_at_goal: float | None = field(
        default=None,
        metadata={
            "help": "planner: cut a plan where it first comes this close to the goal, 0 never (None: the planner's)"
        },
    )


def make_sampler(
    name: str, schedule: NoiseSchedule, num_inference_steps: int | None = None, eta: float = 0.0
) -> ChunkSampler:
    """A chunk sampler: "ddpm" (all training levels by default) or "ddim" (10 steps by default)."""
    if name == "ddpm":
        return ChunkSampler(DDPMScheduler(schedule), num_inference_steps or schedule.num_train_timesteps)
    if name == "ddim":
        return ChunkSampler(DDIMScheduler(schedule, eta=eta), num_inference_steps or 10)
    raise ValueError(f"unknown chunk sampler {name!r}; choose ddpm or ddim")


def build_sampler(
    cfg: SamplerConfig,
    schedule: NoiseSchedule,
    horizon: int,
    n_obs_steps: int,
    n_action_steps: int,
    discrete_dims: tuple[int, ...] = (),
) -> Sampler:
    """The sampler `cfg` describes, laid out for a policy's window (horizon, n_obs_steps, n_action_steps)."""
    if cfg.name in ("ddpm", "ddim"):
        sampler = make_sampler(cfg.name, schedule, cfg.num_inference_steps, cfg.eta)
        return ChunkSampler(sampler.scheduler, sampler.num_inference_steps, cfg.actions_per_tick)
    if cfg.name == "streaming":
        if cfg.actions_per_tick not in (None, n_action_steps):
            raise ValueError(
                f"streaming executes one chunk (the policy's n_action_steps = {n_action_steps}) per tick, "
                f"got actions_per_tick={cfg.actions_per_tick}"
            )
        layout = StreamLayout(horizon, n_obs_steps - 1, n_action_steps)
        steps = cfg.num_inference_steps or layout.n_chunks * n_action_steps  # one call per executed action
        return StreamingSampler(DDIMScheduler(schedule, eta=cfg.eta), layout, steps)
    if cfg.name == "rti":
        first = make_sampler(cfg.first, schedule, cfg.num_inference_steps, cfg.eta)
        dims = tuple(discrete_dims if cfg.discrete_dims is None else cfg.discrete_dims)
        return RTISampler(
            first,
            DDPMScheduler(schedule),
            tuple(cfg.timesteps),
            cfg.actions_per_tick or 1,
            dims,
            cfg.discrete_scale,
        )
    raise ValueError(f"unknown sampler {cfg.name!r}; choose one of {', '.join(SAMPLERS)}")
