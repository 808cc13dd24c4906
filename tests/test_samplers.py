"""Samplers as strategies over one denoiser: streaming levels, RTI warm start, reproducibility, reset, eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpstack.errors import ConfigError
from dpstack.features import Feature
from dpstack.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from dpstack.policy.evaluate import EvalSpec, evaluate_policy
from dpstack.policy.normalizer import Normalizer
from dpstack.policy.samplers import DDIMOptions, DDPMOptions, RTIOptions, SamplerWindow, StreamingOptions, StreamLayout
from dpstack.policy.samplers.rti import RTISampler, pick_start_timestep, shift_chunk, warm_start_gaps
from dpstack.policy.samplers.streaming import streaming_training_timesteps
from dpstack.policy.schedulers import NoiseSchedule, spaced_timesteps
from dpstack.tasks import TaskConfig

SCHEDULE = NoiseSchedule(100)


def zero_target_denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """An oracle whose clean sample is 0: eps = x / sqrt(1 - abar_t), so x0_hat = 0 exactly."""
    return x / (1 - SCHEDULE.alpha_bar(t, x)).sqrt()


def streaming(chunk: int = 5, steps: int | None = None):
    return StreamingOptions(num_inference_steps=steps).build(SamplerWindow(SCHEDULE, 16, 2, chunk))


def test_trailing_spacing_puts_chunk_boundaries_on_the_reference_levels() -> None:
    assert spaced_timesteps(100, 15, "trailing").tolist()[:3] == [99, 92, 85]
    sampler = streaming()
    assert sampler.levels_per_chunk == 5 and sampler.name == "streaming-15"
    taus = sampler.level_timesteps()
    # chunk i starts at level floor(N (i + 1) / h) - 1 (reference: 32, 65, 99 for N=100, h=3)
    assert [int(taus[(i + 1) * 5 - 1]) for i in range(3)] == [32, 65, 99]


def test_streaming_buffer_noise_levels_follow_the_schedule_tick_after_tick() -> None:
    """With an oracle whose clean sample is 0 every DDIM step scales a position by sqrt(1-abar_prev)/sqrt(1-abar_t),
    so after each tick each position must hold sqrt(1 - abar(level)) times the fresh noise it entered with."""
    sampler = streaming()
    batch, horizon, dim = 3, 16, 2
    cond = torch.zeros(batch, 4)
    generator = torch.Generator().manual_seed(0)
    seen_t: list[torch.Tensor] = []

    def denoiser(x, t, c):
        seen_t.append(t.clone())
        return zero_target_denoiser(x, t, c)

    noise = torch.randn(sampler.noise_shape(batch, horizon, dim, None), generator=generator)
    chunk, state = sampler.tick(denoiser, cond, None, noise)
    assert len(seen_t) == 15 and all(t.shape == (batch,) for t in seen_t)  # first tick: constant levels
    assert chunk.shape == (batch, 6, dim) and torch.allclose(chunk, torch.zeros_like(chunk))
    taus = torch.cat([torch.tensor([-1]), sampler.level_timesteps()])
    end_levels = (sampler.start_levels() - sampler.levels_per_chunk).clamp(min=-1)  # chunk i at level 5 i - 1
    origin = noise[-1].clone()  # the noise each position's value is a multiple of
    for _ in range(4):
        expected_std = (1 - SCHEDULE.alpha_bar(taus[end_levels + 1][None], origin[:1])).sqrt()  # (1, T, 1)
        torch.testing.assert_close(state["buffer"], expected_std * origin, rtol=1e-4, atol=1e-6)
        seen_t.clear()
        noise = torch.randn(sampler.noise_shape(batch, horizon, dim, state), generator=generator)
        chunk, state = sampler.tick(denoiser, cond, state, noise)
        assert len(seen_t) == sampler.levels_per_chunk
        assert all(t.shape == (batch, horizon) for t in seen_t)
        expected_t, _ = sampler.call_timesteps()
        assert torch.equal(torch.stack([t[0] for t in seen_t]), expected_t)
        assert torch.allclose(chunk, torch.zeros_like(chunk), atol=1e-6)  # prefix + chunk 0 clean
        origin = torch.cat([origin[:, 5:], noise[0][:, -5:]], dim=1)  # shifted; fresh noise on top


def test_streaming_layout_and_steps_are_validated() -> None:
    with pytest.raises(ValueError, match=r"multiple of n_action_steps.*valid chunk sizes: \[1, 3, 5, 15\]"):
        StreamLayout(16, 1, 8)
    with pytest.raises(ValueError, match="multiple of the number of chunks"):
        streaming(steps=16)
    with pytest.raises(ValueError, match="n_action_steps"):
        PolicyConfig(noise_mode="streaming", n_action_steps=8)
    with pytest.raises(ValueError, match="noise_mode"):
        PolicyConfig(noise_mode="chunky")


def test_streaming_training_levels_rise_by_chunk_and_mix_with_constant() -> None:
    layout = StreamLayout(16, 1, 5)
    t = streaming_training_timesteps(layout, 100, 4000, 0.8, torch.Generator().manual_seed(0))
    assert t.shape == (4000, 16) and t.min() >= 0 and t.max() <= 99
    constant = (t == t[:, :1]).all(dim=1)
    assert 0.17 < constant.float().mean() < 0.23
    chunkwise = t[~constant]
    assert (chunkwise[:, 0] == 0).all()  # the prefix (a past action) is clean
    for i in range(3):
        block = chunkwise[:, 1 + 5 * i : 6 + 5 * i]
        assert (block == block[:, :1]).all()  # one level per chunk
        assert block.min() >= 33 * i and block.max() <= 33 * (i + 1) + 1
    assert (chunkwise[:, 6] > chunkwise[:, 1]).all() and (chunkwise[:, 11] > chunkwise[:, 6]).all()


def rti(timesteps=(2, 1, 0), discrete_dims=()) -> RTISampler:
    cfg = RTIOptions(first="ddim", num_inference_steps=4, timesteps=list(timesteps))
    return cfg.build(SamplerWindow(SCHEDULE, 16, 2, 8, discrete_dims))


def test_rti_without_refinement_returns_the_shifted_warm_start() -> None:
    sampler = rti(timesteps=())
    previous = torch.randn(2, 16, 3)
    chunk, state = sampler.tick(zero_target_denoiser, torch.zeros(2, 1), {"chunk": previous}, torch.randn(1, 2, 16, 3))
    torch.testing.assert_close(chunk, torch.cat([previous[:, 1:], previous[:, -1:]], dim=1))
    assert torch.equal(state["chunk"], chunk) and sampler.nfe(state) == 0


def test_rti_scales_discrete_dims_in_the_warm_start_and_refines_from_the_first_timestep() -> None:
    sampler = rti(discrete_dims=(2,))
    previous = torch.ones(1, 16, 3)
    warm = sampler.warm_start(previous)
    assert torch.allclose(warm[..., :2], torch.ones(1, 16, 2)) and torch.allclose(
        warm[..., 2], torch.full((1, 16), 0.1)
    )
    seen = []
    sampler.tick(
        lambda x, t, c: seen.append(int(t[0])) or torch.zeros_like(x),
        torch.zeros(1, 1),
        {"chunk": previous},
        torch.randn(sampler.noise_shape(1, 16, 3, {"chunk": previous})),
    )
    assert seen == [2, 1, 0]
    with pytest.raises(ValueError, match="descending"):
        rti(timesteps=(0, 1))
    assert torch.equal(shift_chunk(previous, 0), previous)


def test_rti_calibration_gap_falls_with_the_timestep() -> None:
    sampler = rti()
    x_now = torch.randn(8, 16, 2)
    gaps = warm_start_gaps(sampler, x_now, shift_chunk(x_now, 1) + 0.05 * torch.randn(8, 16, 2))
    assert gaps.shape == (100,) and (gaps[1:] < gaps[:-1]).all()
    start = pick_start_timestep(gaps, 1.0)
    assert gaps[start] <= 1.0 and (start == 0 or gaps[start - 1] > 1.0)
    # a perfect warm start needs no noise at all
    assert pick_start_timestep(warm_start_gaps(sampler, x_now, shift_chunk(x_now, 1)), 1.0) == 0


def tiny_policy(**overrides) -> DiffusionPolicy:
    torch.manual_seed(0)
    normalizer = Normalizer(
        {
            "agent_pos": ("minmax", torch.full((2,), 2 / 512), torch.full((2,), -1.0)),
            "keypoints": ("minmax", torch.full((16,), 2 / 512), torch.full((16,), -1.0)),
            "action": ("minmax", torch.full((2,), 2 / 512), torch.full((2,), -1.0)),
        }
    )
    cfg = PolicyConfig(
        **{"denoiser": "unet", "preset": "tiny", "n_action_steps": 5, "noise_mode": "streaming", **overrides}
    )
    features = {"agent_pos": Feature((2,)), "keypoints": Feature((16,))}
    return DiffusionPolicy(cfg, features, Feature((2,)), normalizer).eval()


SAMPLER_CONFIGS = {
    "ddpm": DDPMOptions(num_inference_steps=10),
    "ddpm-mean": DDPMOptions(num_inference_steps=10, deterministic=True),
    "ddim": DDIMOptions(num_inference_steps=4),
    "streaming": StreamingOptions(),
    "rti": RTIOptions(first="ddim", num_inference_steps=4),
}


@pytest.mark.parametrize("name", sorted(SAMPLER_CONFIGS))
def test_each_sampler_is_reproducible_given_the_noise(name: str) -> None:
    policy = tiny_policy()
    sampler = policy.make_sampler(SAMPLER_CONFIGS[name])
    obs = [{"agent_pos": torch.rand(2, 2, 2) * 512, "keypoints": torch.rand(2, 2, 16) * 512} for _ in range(3)]

    def episode(seed: int) -> list[torch.Tensor]:
        generator, state, out = torch.Generator().manual_seed(seed), None, []
        for o in obs:
            noise = torch.randn(sampler.noise_shape(2, 16, 2, state), generator=generator)
            actions, state = policy.sample_tick(o, sampler, state, noise)
            out.append(actions)
        return out

    a, b, c = episode(0), episode(0), episode(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape[1] >= policy.actions_per_tick(sampler)
    if name != "ddim" or SAMPLER_CONFIGS[name].eta > 0:  # deterministic DDIM ignores all but the first noise
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_ddpm_mean_takes_each_posterior_mean_and_ignores_the_step_noise() -> None:
    window = SamplerWindow(SCHEDULE, 8, 2, 4)
    ancestral, mean = (
        DDPMOptions(num_inference_steps=5).build(window),
        DDPMOptions(num_inference_steps=5, deterministic=True).build(window),
    )
    assert (ancestral.name, mean.name) == ("ddpm-5", "ddpm-mean-5")

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + cond[:, None, :1]

    cond, noise = torch.randn(3, 4), torch.randn(mean.noise_shape(3, 8, 2), generator=torch.Generator().manual_seed(0))
    other_steps = torch.cat([noise[:1], torch.randn_like(noise[1:])])
    zero_steps = torch.cat([noise[:1], torch.zeros_like(noise[1:])])
    x = mean.sample(denoiser, cond, noise)
    torch.testing.assert_close(x, mean.sample(denoiser, cond, other_steps), rtol=0, atol=0)
    torch.testing.assert_close(x, ancestral.sample(denoiser, cond, zero_steps), rtol=0, atol=0)
    assert not torch.allclose(ancestral.sample(denoiser, cond, noise), ancestral.sample(denoiser, cond, other_steps))
    other_start = torch.cat([torch.randn_like(noise[:1]), noise[1:]])
    assert not torch.allclose(x, mean.sample(denoiser, cond, other_start))  # x_T still matters


def test_ddim_spacing_picks_the_levels_the_denoiser_sees() -> None:
    window = SamplerWindow(SCHEDULE, 8, 2, 4)
    seen: dict[str, list[int]] = {}
    for spacing in ("leading", "trailing", "linspace"):
        sampler = DDIMOptions(num_inference_steps=8, spacing=spacing).build(window)

        def denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, spacing: str = spacing) -> torch.Tensor:
            seen.setdefault(spacing, []).append(int(t[0]))
            return zero_target_denoiser(x, t, cond)

        x = sampler.sample(denoiser, torch.zeros(2, 3), torch.randn(sampler.noise_shape(2, 8, 2)))
        assert x.abs().max() < 1e-4  # the oracle's clean sample, whatever the levels
    assert seen["leading"] == [84, 72, 60, 48, 36, 24, 12, 0]
    assert seen["trailing"] == [99, 86, 74, 61, 49, 36, 24, 11]
    assert seen["linspace"] == [99, 85, 71, 57, 42, 28, 14, 0]  # diffusers' linspace, rounded
    assert DDIMOptions(num_inference_steps=8, spacing="trailing").build(window).name == "ddim-8-trailing"
    with pytest.raises(ConfigError, match=r"sampler\.spacing must be one of leading, trailing, linspace, got 'middle'"):
        DDIMOptions(spacing="middle").build(window)


@pytest.mark.parametrize("name", ["streaming", "rti"])
def test_reset_clears_the_sampler_state_between_episodes(name: str) -> None:
    policy = tiny_policy()
    sampler = policy.make_sampler(SAMPLER_CONFIGS[name])
    session = policy.session(sampler, torch.Generator().manual_seed(0))
    history = {"agent_pos": np.zeros((1, 2, 2), np.float32), "keypoints": np.zeros((1, 2, 16), np.float32)}
    first = session(history)
    session(history)
    assert session.state is not None and session.network_evaluations == sampler.nfe(None) + sampler.nfe(session.state)
    session.reset()
    assert session.state is None
    session.generator.manual_seed(0)
    np.testing.assert_array_equal(session(history), first)  # the same first tick as a fresh episode


@pytest.mark.parametrize("name", sorted(SAMPLER_CONFIGS))
def test_eval_runs_with_every_sampler_and_measures_nfe(name: str) -> None:
    policy = tiny_policy()
    sampler = policy.make_sampler(SAMPLER_CONFIGS[name])
    task = TaskConfig(name="pusht", max_steps=20)
    record = evaluate_policy(policy, EvalSpec(task, episodes=2, seed=100000, videos=0), sampler)
    assert record["episodes"] == 2 and record["sampler"] == sampler.name
    ticks = 20
    expected = {
        "ddpm": 10 * 4 / ticks,  # a chunk of 5 actions every 5 ticks
        "ddpm-mean": 10 * 4 / ticks,
        "ddim": 4 * 4 / ticks,
        "streaming": (15 + 5 * 3) / ticks,  # a full first tick, then 5 calls per 5 actions
        "rti": (4 + 3 * 19) / ticks,  # a full first tick, then 3 calls per action
    }[name]
    assert record["nfe_per_action"] == pytest.approx(expected)
    assert record["tick_ms_p50"] > 0 and 0 <= record["mean_score"] <= 1
