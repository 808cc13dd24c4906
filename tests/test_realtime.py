"""Real-time control: one network call per tick (per-action streaming) and the consistency-distilled sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpstack.commands import export as export_command
from dpstack.data.dataset import SequenceDataset
from dpstack.errors import ConfigError
from dpstack.methods import load_policy
from dpstack.policy.consistency import distillation_levels, distillation_loss
from dpstack.policy.diffusion_policy import DiffusionPolicy
from dpstack.policy.export import export_policy, parity_check
from dpstack.policy.runtime import OnnxPolicy
from dpstack.policy.samplers import ConsistencyOptions, DDIMOptions, SamplerWindow, StreamingOptions, max_calls_per_tick
from dpstack.policy.samplers.consistency import boundary_coefficients, consistency_function
from dpstack.policy.schedulers import NoiseSchedule
from dpstack.tasks import TaskConfig
from dpstack.train import train
from tests.conftest import MAZE, train_config
from tests.test_samplers import SCHEDULE, tiny_policy, zero_target_denoiser

PER_ACTION = StreamingOptions(start_steps=1)


def per_action(start_steps: int | None = 1):
    return StreamingOptions(start_steps=start_steps).build(SamplerWindow(SCHEDULE, 16, 2, 1))


def test_per_action_streaming_makes_one_call_per_tick_and_lowers_every_position_one_level() -> None:
    sampler = per_action()
    assert sampler.num_inference_steps == 15 and sampler.levels_per_chunk == 1 and sampler.actions_per_tick == 1
    assert max_calls_per_tick(sampler) == 1 and sampler.name == "streaming-15-start1"
    batch, dim = 2, 2
    cond = torch.zeros(batch, 4)
    calls: list[torch.Tensor] = []

    def denoiser(x, t, c):
        calls.append(t.clone())
        return zero_target_denoiser(x, t, c)

    generator = torch.Generator().manual_seed(0)
    state = None
    levels = sampler.level_table()  # index l + 1 -> timestep of level l; level -1 clean
    for tick in range(6):
        noise = torch.randn(sampler.noise_shape(batch, 16, dim, state), generator=generator)
        chunk, state = sampler.tick(denoiser, cond, state, noise)
        assert len(calls) == tick + 1  # exactly one denoiser call per tick, the first one included
        assert chunk.shape == (batch, 2, dim)  # the past action and the one clean action executed now
        assert torch.allclose(chunk, torch.zeros_like(chunk), atol=1e-6)  # the oracle's clean sample
        if tick:  # steady tick: position 1 + i enters at level i and leaves at level i - 1
            expected = torch.cat([torch.zeros(1, dtype=torch.long), levels[1:16]])
            assert torch.equal(calls[-1][0], expected)
            # after the call the executed position is clean and every later one still noisy
            assert state["buffer"][:, 1].abs().max() < 1e-6 and (state["buffer"][:, 2:].abs() > 0).all()
    # a full first tick (the default) is K calls
    assert per_action(None).nfe(None) == 15 and max_calls_per_tick(per_action(None)) == 15


def test_per_action_streaming_exports_with_one_call_per_tick(tmp_path: Path) -> None:
    policy = tiny_policy(n_action_steps=1)
    sampler = policy.make_sampler(PER_ACTION)
    export_policy(policy, sampler, tmp_path, [0, 0], [512, 512], 10.0, {"name": "pusht"})
    meta = json.loads((tmp_path / "policy.json").read_text())
    assert meta["sampler"]["max_calls_per_tick"] == 1 and meta["actions_per_tick"] == 1
    assert meta["graphs"]["tick"]["network_evaluations"] == 1 and meta["graphs"]["start"]["network_evaluations"] == 1
    worst = parity_check(policy, sampler, tmp_path, ticks=10, batch=2)
    assert worst["normalized"] <= 1e-4, worst
    runtime = OnnxPolicy(tmp_path, seed=0)
    obs = {"agent_pos": np.full(2, 200, np.float32), "keypoints": np.full(16, 250, np.float32)}
    actions = [runtime.act(obs) for _ in range(7)]
    assert runtime.network_evaluations == 7 and all(a.shape == (2,) and np.isfinite(a).all() for a in actions)


def test_export_refuses_a_sampler_that_cannot_run_one_call_per_tick(trained: Path, tmp_path: Path) -> None:
    cfg = export_command.Config(
        checkpoint=str(trained), out=str(tmp_path / "x"), sampler={"name": "ddim", "num_inference_steps": 3},
        one_call_per_tick=True,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"ddim-3 .* up to 3 denoiser calls.*\n  - per-action streaming") as error:
        export_command.run(cfg)
    assert "rti with one refinement step" in str(error.value) and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ consistency
def test_boundary_coefficients_pin_the_identity_at_clean_and_x0_elsewhere() -> None:
    c_skip, c_out = boundary_coefficients(torch.tensor([-1, 0, 9]))
    # t' = t + 1; c_skip = 0.25 / ((10 t')^2 + 0.25), c_out = 10 t' / sqrt((10 t')^2 + 0.25)
    assert torch.allclose(c_skip, torch.tensor([1.0, 0.25 / 100.25, 0.25 / 10000.25]))
    assert torch.allclose(c_out, torch.tensor([0.0, 10 / 100.25**0.5, 100 / 10000.25**0.5]))
    x = torch.randn(3, 16, 2)
    model_output = torch.randn(3, 16, 2)
    t = torch.tensor([-1, -1, -1])
    assert torch.equal(consistency_function(SCHEDULE, model_output, t, x), x)  # f(x, clean) = x, whatever the net
    t = torch.tensor([50, 50, 50])
    x0 = SCHEDULE.predict_original(model_output, t, x)
    assert torch.allclose(consistency_function(SCHEDULE, model_output, t, x), x0, atol=1e-4)


def test_distillation_loss_vanishes_for_a_consistent_student_and_grows_otherwise() -> None:
    schedule = NoiseSchedule(100, clip_sample=False)
    levels = distillation_levels(schedule, 10)
    assert levels[0] == -1 and levels[1] == 0 and levels[2] == 10 and levels[-1] == 90 and len(levels) == 11
    target = torch.randn(4, 16, 2) * 0.3

    def oracle(x, t, c):  # eps of the one clean sample `target`: every trajectory ends there
        abar = schedule.alpha_bar(t, x)
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()

    cond = (torch.zeros(4, 3),) * 3
    for index in (1, 7, 10):  # the clean boundary, a middle level, the top
        index_t = torch.full((4,), index)
        loss = distillation_loss(oracle, oracle, oracle, schedule, target, cond, 10, index=index_t)
        assert float(loss) < 1e-5  # only the boundary blend (c_skip ~ 1e-3 above clean) remains
    wrong = distillation_loss(
        lambda x, t, c: torch.zeros_like(x), oracle, oracle, schedule, target, cond, 10, index=torch.full((4,), 7)
    )
    assert float(wrong) > 1e-3


def one_step_gap(policy: DiffusionPolicy, teacher: DiffusionPolicy, obs: dict[str, torch.Tensor]) -> float:
    """Mean squared distance (normalized units) of one consistency call from the teacher's DDIM-10, same x_T."""
    x_t = torch.randn(obs["state"].shape[0], 16, 2, generator=torch.Generator().manual_seed(0))
    reference, _ = teacher.sample_tick(
        obs, teacher.make_sampler(DDIMOptions()), None, torch.cat([x_t[None], 0 * x_t[None].expand(10, -1, -1, -1)])
    )
    one, _ = policy.sample_tick(obs, policy.make_sampler(ConsistencyOptions()), None, x_t[None])
    normalize = teacher.normalizer.normalize
    return float((normalize("action", one) - normalize("action", reference)).pow(2).mean())


def test_distilled_policy_trains_exports_and_runs_in_one_call(
    maze_store: Path, trained_mlp: Path, tmp_path: Path
) -> None:
    run = tmp_path / "student"
    cfg = train_config(maze_store, run, teacher=str(trained_mlp), steps=200, warmup_steps=20, val_every=100)
    train(cfg)
    teacher, student = load_policy(trained_mlp), load_policy(run)
    dataset = SequenceDataset(maze_store, ["goal", "state"], **teacher.data_timing())
    windows = [dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // 128))]
    obs = {k: torch.stack([torch.as_tensor(w["obs"][k]) for w in windows]) for k in ("goal", "state")}
    # one call of the student lands nearer the teacher's 10-step DDIM result than one call of the teacher
    assert one_step_gap(student, teacher, obs) < 0.85 * one_step_gap(teacher, teacher, obs)
    assert student.cfg.sampler == "consistency"
    sampler = student.make_sampler()
    assert sampler.name == "consistency-1" and max_calls_per_tick(sampler) == 1
    two = student.make_sampler(ConsistencyOptions(timesteps=[90, 50]))
    export_policy(student, two, tmp_path / "onnx", [-1, -1], [1, 1], 100.0, {"name": MAZE.name})
    assert parity_check(student, two, tmp_path / "onnx", ticks=3)["normalized"] <= 1e-4
    runtime = OnnxPolicy(tmp_path / "onnx", seed=0)
    runtime.act({"state": np.zeros(4, np.float32), "goal": np.ones(2, np.float32)})
    assert runtime.network_evaluations == 2


def test_distillation_resumes_with_its_target_network(maze_store: Path, trained_mlp: Path, tmp_path: Path) -> None:
    """Killed after 20 steps and resumed to 40, the student equals the uninterrupted 40-step one."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(train_config(maze_store, straight, teacher=str(trained_mlp), steps=40, checkpoint_every=20))
    train(train_config(maze_store, resumed, teacher=str(trained_mlp), steps=40, checkpoint_every=20, stop_after=20))
    train(train_config(maze_store, resumed, teacher=str(trained_mlp), steps=40, checkpoint_every=20, resume=True))
    a, b = load_policy(straight).state_dict(), load_policy(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_refuses_a_teacher_of_another_task(maze_store: Path, trained_mlp: Path, tmp_path: Path) -> None:
    cfg = train_config(maze_store, tmp_path / "x", teacher=str(trained_mlp))
    cfg.task = TaskConfig(name="pusht")
    with pytest.raises(ConfigError, match=r"teacher=.*trained on task 'pointmaze-umaze', task is 'pusht'"):
        train(cfg)


@pytest.fixture(scope="module")
def trained_mlp(maze_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(train_config(maze_store, run, steps=150, warmup_steps=20))
    return run
