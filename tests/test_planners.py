"""Diffuser's trajectory diffusion: inpainting holds the given states exactly; guidance raises the value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpstack.planners.diffuser import PlanOptions
from dpstack.planners.diffusion import GuideConfig, TrajectoryDiffusion, inpaint
from dpstack.policy.denoisers.unet1d import ConditionalUnet1D
from dpstack.policy.schedulers import NoiseSchedule


def _model(action_dim: int = 2, state_dim: int = 4, n_global_conditions: int = 0) -> TrajectoryDiffusion:
    torch.manual_seed(0)
    cond_dim = n_global_conditions * state_dim
    denoiser = ConditionalUnet1D(action_dim + state_dim, cond_dim, down_dims=(16, 32), step_embed_dim=16)
    schedule = NoiseSchedule(num_train_timesteps=20)
    return TrajectoryDiffusion(denoiser, action_dim, state_dim, schedule, global_conditioning=cond_dim > 0)


@pytest.mark.parametrize("n_global_conditions", [0, 2], ids=["inpainting", "inpainting+film"])
def test_inpainting_holds_start_and_goal_states_exactly_through_sampling(n_global_conditions: int) -> None:
    model = _model(n_global_conditions=n_global_conditions).eval()
    start, goal = torch.tensor([[0.1, -0.2, 0.3, 0.0]] * 3), torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3)
    plans = model.sample({0: start, 15: goal}, horizon=16, batch=3, generator=torch.Generator().manual_seed(1))
    assert plans.shape == (3, 16, 6)
    assert torch.equal(plans[:, 0, 2:], start) and torch.equal(plans[:, 15, 2:], goal)
    assert not torch.equal(plans[:, 7, 2:], plans[:, 8, 2:])  # the rest is sampled, not copied


def test_inpaint_checks_shapes_and_training_loss_ignores_given_states() -> None:
    x = torch.zeros(2, 8, 6)
    try:
        inpaint(x, {0: torch.zeros(2, 3)}, action_dim=2)
    except ValueError as exc:
        assert "expected (2, 4)" in str(exc)
    else:
        raise AssertionError("a wrong condition shape must be an error")
    model = _model()
    generator = torch.Generator().manual_seed(0)
    trajectories = torch.randn(4, 16, 6, generator=generator)
    conditions = {0: trajectories[:, 0, 2:]}
    noise, t = torch.randn(4, 16, 6, generator=generator), torch.full((4,), 10)

    def loss_with(changed: tuple[int, slice]) -> torch.Tensor:
        other = noise.clone()
        other[:, changed[0], changed[1]] += 5.0  # a different target (epsilon) at these entries only
        return model.loss(trajectories, conditions, noise=other, timesteps=t)

    loss = model.loss(trajectories, conditions, noise=noise, timesteps=t)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.equal(loss_with((0, slice(2, None))), loss)  # the given start state: not in the loss
    assert not torch.allclose(loss_with((0, slice(0, 2))), loss)  # the start's action is predicted
    assert not torch.allclose(loss_with((1, slice(2, None))), loss)  # so is every other state


def test_value_guidance_raises_the_value_of_plans() -> None:
    """A toy value (mean x position over the plan): guided plans score higher than unguided ones."""
    model = _model().eval()
    start = torch.zeros(16, 4)

    def value(trajectories: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return trajectories[:, :, 2].mean(dim=1)

    def plans(guide) -> torch.Tensor:
        return model.sample(
            {0: start}, horizon=16, batch=16, generator=torch.Generator().manual_seed(3), guide=guide,
            guide_config=GuideConfig(scale=50.0, n_guide_steps=2, t_stopgrad=2),
        )  # fmt: skip

    unguided, guided = value(plans(None), None).mean(), value(plans(value), None).mean()
    assert guided > unguided + 0.05, (guided, unguided)


def test_planner_trained_briefly_reaches_the_goal_and_evaluates_like_a_policy(maze_store, tmp_path) -> None:
    """`dpstack train policy=diffuser`'s code path on a small maze store, then eval.json through evaluate_policy."""
    import json

    from dpstack.methods import load_policy
    from dpstack.policy.diffusion_policy import PolicyConfig
    from dpstack.policy.evaluate import EvalSpec, evaluate_policy
    from dpstack.tasks import TaskConfig
    from dpstack.train import train
    from tests.conftest import MAZE, train_config

    policy = PolicyConfig(
        method="diffuser", preset="tiny", horizon=64, n_obs_steps=1, n_action_steps=1, num_train_timesteps=32
    )
    train(train_config(maze_store, tmp_path / "run", steps=150, batch_size=32, warmup_steps=20, policy=policy))
    planner = load_policy(tmp_path / "run")
    assert type(planner).__name__ == "DiffuserPlanner"
    task = TaskConfig(**{**MAZE.__dict__, "max_steps": 150})
    record = evaluate_policy(planner, EvalSpec(task, episodes=3, seed=100000, out_dir=tmp_path / "eval", videos=0))
    assert record["success_rate"] >= 2 / 3, record["per_episode"]
    assert record["sampler"] == "diffuser-ddpm" and record["nfe_per_action"] == 32 / record["mean_steps"]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {"success_rate", "mean_score", "nfe_per_action", "tick_ms_p50", "per_episode", "seeds"} <= set(saved)
    # plans honour the start and the goal exactly
    state, goal = torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.tensor([[-0.5, -0.5]])
    plan = planner.plan(state, goal, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plan["state"][0, 0], state[0], atol=1e-5)
    assert torch.allclose(plan["state"][0, -1], torch.tensor([-0.5, -0.5, 0.0, 0.0]), atol=1e-5)
    from dpstack.cli import main

    assert main(["plan", str(tmp_path / "run"), f"out={tmp_path / 'plan.png'}", "seed=100001"]) == 0
    assert (tmp_path / "plan.png").stat().st_size > 1000
    assert main(["export", f"checkpoint={tmp_path / 'run'}", f"out={tmp_path / 'onnx'}"]) == 2  # planners: not yet
    with pytest.raises(ValueError, match="needs a value net"):
        planner.make_sampler(PlanOptions(guide_scale=0.1))
    with pytest.raises(ValueError, match="needs something to rank plans by"):
        planner.make_sampler(PlanOptions(n_samples=4))
    # stop_at_goal: the same plan, cut at its first state within 0.3 of the goal, the goal at rest from there
    history = {"state": state.numpy()[:, None], "goal": goal.numpy()[:, None]}
    whole = planner.session(planner.make_sampler(PlanOptions()), torch.Generator().manual_seed(5))
    cut_sampler = planner.make_sampler(PlanOptions(stop_at_goal=0.3))
    cut = planner.session(cut_sampler, torch.Generator().manual_seed(5))
    whole(history), cut(history)
    near = np.linalg.norm(whole.plan[0, :, :2] - goal.numpy()[0], axis=1) <= 0.3
    first = int(near.argmax())
    assert cut_sampler.name == "diffuser-ddpm-stop0.3" and near[-1]
    np.testing.assert_array_equal(cut.plan[0, :first], whole.plan[0, :first])
    np.testing.assert_array_equal(cut.plan[0, first:], np.tile([-0.5, -0.5, 0.0, 0.0], (64 - first, 1)))
    # n_samples without a value net: of the same 4 candidates, the one arriving first
    from dpstack.planners.diffuser import first_arrival

    one = planner.make_sampler(PlanOptions(stop_at_goal=0.3))
    candidates = planner.plan(state.repeat(4, 1), goal.repeat(4, 1), one, torch.Generator().manual_seed(7))["state"]
    arrivals = first_arrival(candidates[..., :2], goal.repeat(4, 1), 0.3)
    best = planner.plan(state, goal, planner.make_sampler(PlanOptions(n_samples=4, stop_at_goal=0.3)),
                        torch.Generator().manual_seed(7))["state"]  # fmt: skip
    assert torch.allclose(best[0], candidates[int(arrivals.argmin())], atol=1e-5), arrivals


def test_value_guided_planner_trains_its_value_net_and_replans(tmp_path) -> None:
    """policy=diffuser-value on a noisy dense-reward maze store: the value loss falls, plans are ranked by
    value, the receding horizon replans every `replan_every` ticks and eval.json reports the planning time."""
    import json

    from dpstack.config import load_config
    from dpstack.envs.collect import collect
    from dpstack.envs.registry import load_task_config
    from dpstack.methods import load_policy
    from dpstack.policy.evaluate import EvalSpec, evaluate_policy
    from dpstack.train import TrainConfig, train

    task = load_task_config("pointmaze-umaze-dense", ["max_steps=100"])
    collect(task, episodes=12, out=tmp_path / "dense.zarr", noise=0.3, progress=False)
    cfg = load_config(
        "train",
        TrainConfig,
        [
            "task=pointmaze-umaze-dense",
            "task.max_steps=40",
            "policy=diffuser-value",
            "policy.preset=tiny",
            "policy.method_kwargs.n_samples=4",
            f"dataset={tmp_path / 'dense.zarr'}",
            f"out={tmp_path / 'run'}",
            "steps=120",
            "batch_size=32",
            "warmup_steps=10",
            "eval_episodes=0",
            "progress=false",
            "threads=1",
        ],
    )
    train(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    value_losses = [m["value_loss"] for m in metrics if "value_loss" in m]
    assert len(value_losses) == 120 and np.mean(value_losses[-20:]) < 0.5 * np.mean(value_losses[:20])
    planner = load_policy(tmp_path / "run")
    assert planner.value is not None and not planner.options.condition_goal
    plan = planner.plan(torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 2), torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
    assert plan["state"].shape == (2, 32, 4) and plan["value"].shape == (2,)
    assert torch.allclose(plan["state"][:, 0], torch.zeros(2, 4), atol=1e-5)  # only the start is inpainted
    spec = EvalSpec(cfg.task, episodes=2, seed=100000, num_envs=2, out_dir=tmp_path / "eval", videos=0)
    record = evaluate_policy(planner, spec)
    assert record["sampler"] == "diffuser-ddpm-guided1-best4"
    assert record["plans_per_episode"] == 40 / 4 and record["plan_ms_p50"] > 0
    assert {"plan_ms_p50", "plans_per_episode", "mean_return"} <= set(
        json.loads((tmp_path / "eval" / "eval.json").read_text())
    )
    unguided = planner.make_sampler(PlanOptions(guide_scale=0.0, n_samples=1, replan_every=0))
    assert unguided.name == "diffuser-ddpm" and unguided.replan_every == 0
