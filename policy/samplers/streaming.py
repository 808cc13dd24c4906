"""Streaming Diffusion Policy (Høeg et al. 2024): a rolling action buffer whose noise rises along the horizon.

Layout. The window of `horizon` actions starts with a prefix of `n_obs_steps - 1` past actions, then
`n_chunks` chunks of `chunk` actions each (chunk 0 is the one executed next). Between ticks the buffer
holds the prefix and chunk 0 clean and chunk i at inference level i * L - 1, where L = K / n_chunks
levels per chunk over K inference levels with "trailing" spacing (level l is training timestep
floor((l + 1) N / K) - 1, so chunk boundaries fall on floor(N (i + 1) / h) - 1).

A tick shifts the buffer by one chunk (the executed chunk becomes the new prefix), appends fresh
noise at the top level K - 1, and runs L denoiser calls; each call lowers every noisy position by one
level, so chunk 0 comes out clean and every other chunk ends one chunk lower. With K = L * n_chunks and
`chunk` actions per tick that is L / chunk network evaluations per executed action (1 when L = chunk).
The first tick of an episode denoises the whole window at a constant level (`start_steps` calls of
DDIM over the same levels; K by default) and then noises chunk i to its level with the forward process,
so the buffer starts in the distribution the network was trained on. `start_steps=1` makes the start
one call as well (a one-step estimate of the window, which the steady ticks refine as it moves down
the buffer): with chunks of one action (policy=unet-streaming-per-action) no tick of an episode then
makes more than one network call.

Training ("streaming" noise mode of the policy): with probability `chunkwise_weight` (0.8) a sample
gets chunk-wise levels, chunk i at floor(N (i + u) / h) with one u ~ U[0, 1) per sample and the
prefix at 0 (clean); otherwise one constant level over the window (standard Diffusion Policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dpstack.bounds import bounds
from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.samplers.chunk import ChunkSampler
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule, spaced_timesteps


@dataclass(frozen=True)
class StreamLayout:
    """Where the prefix and the chunks sit in a window of `horizon` actions."""

    horizon: int
    prefix: int  # n_obs_steps - 1 past actions
    chunk: int  # actions per chunk = actions executed per tick

    def __post_init__(self) -> None:
        span = self.horizon - self.prefix
        if self.chunk < 1 or span < self.chunk or span % self.chunk:
            valid = [c for c in range(1, span + 1) if span % c == 0]
            raise ValueError(
                f"streaming needs (horizon - n_obs_steps + 1) = {span} to be a multiple of n_action_steps "
                f"(the chunk size), got n_action_steps={self.chunk}; valid chunk sizes: {valid}"
            )

    @property
    def n_chunks(self) -> int:
        return (self.horizon - self.prefix) // self.chunk

    def chunk_index(self) -> torch.Tensor:
        """(T,) chunk of each position; -1 for the prefix."""
        positions = torch.arange(self.horizon)
        return torch.where(positions < self.prefix, -1, (positions - self.prefix) // self.chunk)


def streaming_training_timesteps(
    layout: StreamLayout,
    num_train_timesteps: int,
    batch: int,
    chunkwise_weight: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, T) training levels: chunk-wise rising levels with prob. `chunkwise_weight`, else one constant level."""
    n, h = num_train_timesteps, layout.n_chunks
    chunk = layout.chunk_index()
    u = torch.rand(batch, 1, generator=generator)
    chunkwise = ((chunk.clamp(min=0) + u) * n / h).floor().long().clamp(max=n - 1)
    chunkwise = torch.where(chunk < 0, 0, chunkwise)
    constant = torch.randint(0, n, (batch, 1), generator=generator).expand(batch, layout.horizon)
    use_chunkwise = torch.rand(batch, 1, generator=generator) < chunkwise_weight
    return torch.where(use_chunkwise, chunkwise, constant)


@dataclass(frozen=True)
class StreamingSampler:
    """Streaming denoising over `num_inference_steps` (K) levels; K must be a multiple of the chunk count.

    State: {"buffer": (B, T, Da)}, the buffer after the last tick (prefix and chunk 0 clean).
    Noise: first tick (K + 2, B, T, Da): x_K, one per step, and the noise that sets the staircase;
    later ticks (L + 1, B, T, Da): noise[0][:, -chunk:] is the fresh top chunk, noise[1:] one per call
    (unused by deterministic DDIM). The returned chunk is the clean part: prefix + chunk 0.
    """

    scheduler: DDIMScheduler | DDPMScheduler
    layout: StreamLayout
    num_inference_steps: int
    start_steps: int | None = None  # calls of an episode's first tick (None: num_inference_steps)

    def __post_init__(self) -> None:
        if self.start_steps is not None and not 1 <= self.start_steps <= self.num_inference_steps:
            raise ValueError(
                f"streaming: start_steps must be in [1, num_inference_steps={self.num_inference_steps}], "
                f"got {self.start_steps}"
            )
        if self.num_inference_steps % self.layout.n_chunks:
            raise ValueError(
                f"streaming: num_inference_steps ({self.num_inference_steps}) must be a multiple of the number of "
                f"chunks ({self.layout.n_chunks} chunks of {self.layout.chunk} actions)"
            )

    stateful: ClassVar[bool] = True  # carries state between ticks (its first tick differs)

    @property
    def name(self) -> str:
        start = "" if self.first_tick_calls == self.num_inference_steps else f"-start{self.first_tick_calls}"
        return f"streaming-{self.num_inference_steps}{start}"

    @property
    def first_tick_calls(self) -> int:
        return self.start_steps or self.num_inference_steps

    @property
    def actions_per_tick(self) -> int:
        return self.layout.chunk

    @property
    def levels_per_chunk(self) -> int:
        return self.num_inference_steps // self.layout.n_chunks

    @property
    def schedule(self) -> NoiseSchedule:
        return self.scheduler.schedule

    def level_timesteps(self) -> torch.Tensor:
        """(K,) training timestep of each inference level, ascending: level l -> floor((l+1) N / K) - 1."""
        return spaced_timesteps(self.schedule.num_train_timesteps, self.num_inference_steps, "trailing").flip(0)

    def level_table(self) -> torch.Tensor:
        """(K + 1,) timestep of level l at index l + 1; index 0 (level -1) is "clean" (-1)."""
        return torch.cat([torch.tensor([-1]), self.level_timesteps()])

    def start_levels(self) -> torch.Tensor:
        """(T,) level of each position at the start of a steady tick (after the shift); -1 = clean."""
        chunk = self.layout.chunk_index()
        return torch.where(chunk < 0, -1, (chunk + 1) * self.levels_per_chunk - 1)

    def call_timesteps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, T) timestep and previous timestep of every position at each call of a steady tick.

        The prefix is clean: it is shown to the network at timestep 0 and never updated (prev == t).
        """
        taus = self.level_table()
        levels = self.start_levels()[None] - torch.arange(self.levels_per_chunk)[:, None]  # (L, T)
        clean = self.start_levels()[None] < 0
        t = torch.where(clean, 0, taus[levels + 1])
        prev = torch.where(clean, 0, taus[levels])
        return t, prev

    def chunk_length(self, horizon: int) -> int:
        """Length of the chunk `tick` returns (from the window's first position)."""
        return self.layout.prefix + self.layout.chunk

    def nfe(self, state: SamplerState) -> int:
        return self.first_tick_calls if state is None else self.levels_per_chunk

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: SamplerState = None) -> tuple[int, ...]:
        if horizon != self.layout.horizon:
            raise ValueError(f"streaming sampler built for horizon {self.layout.horizon}, got {horizon}")
        calls = self.first_tick_calls + 1 if state is None else self.levels_per_chunk
        return (calls + 1, batch, horizon, action_dim)

    @torch.no_grad()
    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        clean_end = self.layout.prefix + self.layout.chunk
        if state is None:
            buffer = self._first_buffer(denoiser, cond, noise)
        else:
            buffer = self._steady_tick(denoiser, cond, state["buffer"], noise)
        return buffer[:, :clean_end], {"buffer": buffer}

    def _first_buffer(self, denoiser: Denoiser, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # the whole window at a constant level over the same K trailing-spaced levels
        full = ChunkSampler(self.scheduler, self.first_tick_calls, spacing="trailing")
        x = full.sample(denoiser, cond, noise[:-1])
        # chunk i sits at level i L - 1 at the end of a tick (chunk 0 clean): noise the clean window there
        end_levels = (self.start_levels() - self.levels_per_chunk).clamp(min=-1)
        end_t = self.level_table()[end_levels + 1].to(cond.device)[None].expand(cond.shape[0], -1)
        return self.schedule.add_noise(x, noise[-1], end_t)

    def _steady_tick(
        self, denoiser: Denoiser, cond: torch.Tensor, buffer: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        chunk = self.layout.chunk
        x = torch.cat([buffer[:, chunk:], noise[0][:, -chunk:]], dim=1)  # shift; fresh noise at the top level
        t_calls, prev_calls = (v.to(cond.device) for v in self.call_timesteps())
        clean = (self.start_levels() < 0).to(cond.device)[None, :, None]
        batch = x.shape[0]
        for i in range(self.levels_per_chunk):
            t = t_calls[i][None].expand(batch, -1)
            prev = prev_calls[i][None].expand(batch, -1)
            stepped = self.scheduler.step(denoiser(x, t, cond), t, prev, x, noise[i + 1]).prev_sample
            x = torch.where(clean, x, stepped)
        return x


@dataclass
class StreamingOptions:
    """`sampler=streaming`: Streaming Diffusion Policy (needs a policy trained with noise_mode=streaming)."""

    name: str = "streaming"
    num_inference_steps: int | None = field(
        default=None,
        metadata={
            "help": "DDIM levels, a multiple of the chunk count (None: one call per executed action)",
            **bounds(1),
        },
    )
    eta: float = field(default=0.0, metadata={"help": "DDIM stochasticity (0: deterministic)", **bounds(0)})
    start_steps: int | None = field(
        default=None,
        metadata={"help": "calls of an episode's first tick (None: num_inference_steps; 1: one call)", **bounds(1)},
    )

    def build(self, window: SamplerWindow) -> StreamingSampler:
        layout = StreamLayout(window.horizon, window.n_obs_steps - 1, window.n_action_steps)
        steps = self.num_inference_steps or layout.n_chunks * window.n_action_steps
        return StreamingSampler(DDIMScheduler(window.schedule, eta=self.eta), layout, steps, self.start_steps)
