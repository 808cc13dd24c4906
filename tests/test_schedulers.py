"""Noise schedules and DDPM / DDIM steps: known values, shapes, per-position timesteps, reproducibility."""

from __future__ import annotations

import pytest
import torch

from dpstack.policy.samplers import ChunkSampler, make_sampler
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule


def test_cosine_schedule_is_monotone_and_ends_near_zero() -> None:
    schedule = NoiseSchedule(100)
    abar = schedule.alphas_cumprod
    assert abar.shape == (100,) and torch.all(abar[1:] < abar[:-1])
    assert abar[0] > 0.999 and abar[-1] < 1e-3
    assert torch.all(schedule.betas <= 0.999)


def test_add_noise_matches_closed_form_and_per_position_timesteps() -> None:
    schedule = NoiseSchedule(100)
    x0, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    t = torch.tensor([10, 90])
    expected = (
        schedule.alphas_cumprod[t].sqrt()[:, None, None] * x0
        + (1 - schedule.alphas_cumprod[t]).sqrt()[:, None, None] * noise
    )
    assert torch.allclose(schedule.add_noise(x0, noise, t), expected)
    per_position = torch.tensor([[0, 10, 50, 99], [99, 99, 0, 0]])
    noisy = schedule.add_noise(x0, noise, per_position)
    for b in range(2):
        for i in range(4):
            single = schedule.add_noise(
                x0[b : b + 1, i : i + 1], noise[b : b + 1, i : i + 1], per_position[b, i : i + 1]
            )
            assert torch.allclose(noisy[b, i], single[0, 0])


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_step_with_true_noise_recovers_clean_sample(scheduler_cls) -> None:
    """With the exact epsilon, every reverse step lands on the forward-process path and x_0 is exact."""
    schedule = NoiseSchedule(100, clip_sample=False)
    scheduler = scheduler_cls(schedule)
    x0, eps = torch.randn(3, 8, 2) * 0.5, torch.randn(3, 8, 2)
    t, prev = torch.full((3,), 40), torch.full((3,), -1)
    out = scheduler.step(eps, t, prev, schedule.add_noise(x0, eps, t), noise=None)
    assert torch.allclose(out.pred_original_sample, x0, atol=1e-5)
    assert torch.allclose(out.prev_sample, x0, atol=1e-4)
    assert torch.all(out.std == 0)  # the last step is deterministic


def test_ddpm_step_exposes_gaussian_mean_and_std() -> None:
    schedule = NoiseSchedule(100)
    scheduler = DDPMScheduler(schedule)
    x, eps, noise = torch.randn(2, 4, 2), torch.randn(2, 4, 2), torch.randn(2, 4, 2)
    t, prev = torch.tensor([50, 50]), torch.tensor([49, 49])
    out = scheduler.step(eps, t, prev, x, noise)
    assert torch.allclose(out.prev_sample, out.mean + out.std * noise)
    beta = schedule.betas[50]
    expected_var = (1 - schedule.alphas_cumprod[49]) / (1 - schedule.alphas_cumprod[50]) * beta
    assert torch.allclose(out.std.flatten()[0] ** 2, expected_var, rtol=1e-4)
    floored = DDPMScheduler(schedule, min_std=0.1).step(eps, t, prev, x, noise)
    assert torch.all(floored.std >= 0.1)


def test_timesteps_are_descending_and_validated() -> None:
    schedule = NoiseSchedule(100)
    assert DDIMScheduler(schedule).timesteps(10).tolist() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert DDPMScheduler(schedule).timesteps().tolist() == list(range(99, -1, -1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler(schedule).timesteps(101)
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="sigmoid")


@pytest.mark.parametrize("name,steps", [("ddpm", 100), ("ddim", 10), ("ddim", 4)])
def test_samplers_shape_reproducible_given_noise(name: str, steps: int) -> None:
    sampler = make_sampler(name, NoiseSchedule(100), steps)
    assert isinstance(sampler, ChunkSampler) and sampler.nfe_per_chunk == steps
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    calls = []

    def denoiser(x, t, cond):
        calls.append(t)
        return net(x) + cond[:, None, :2]

    cond = torch.randn(3, 5)
    noise = torch.randn(sampler.noise_shape(3, 8, 2))
    a = sampler.sample(denoiser, cond, noise)
    b = sampler.sample(denoiser, cond, noise.clone())
    assert a.shape == (3, 8, 2) and torch.equal(a, b)
    assert len(calls) == 2 * steps and all(c.shape == (3,) for c in calls)
    other = sampler.sample(denoiser, cond, torch.randn(sampler.noise_shape(3, 8, 2)))
    assert not torch.equal(a, other)
