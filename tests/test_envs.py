"""Benchmark tasks: deterministic resets by seed, declared features, and experts that succeed."""

from __future__ import annotations

import numpy as np
import pytest

from dpstack.envs.registry import TASKS, make_env, make_expert
from dpstack.errors import ConfigError
from dpstack.tasks import TaskConfig

FAST_TASKS = ["pusht", "pointmaze-umaze", "pointmaze-medium", "pointmaze-large"]


def _rollout(env, actions: np.ndarray, seed: int) -> list[dict[str, np.ndarray]]:
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for action in actions:
        obs, *_ = env.step(action)
        trace.append(obs)
    return trace


@pytest.mark.parametrize("name", FAST_TASKS)
def test_reset_is_deterministic_by_seed_and_steps(name: str) -> None:
    env = make_env(name)
    actions = np.random.default_rng(0).uniform(env.action_low, env.action_high, (10, *env.action_feature.shape))
    first, again = _rollout(env, actions, seed=5), _rollout(env, actions, seed=5)
    other = _rollout(env, actions, seed=6)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(first[0][k], other[0][k]) for k in first[0])
    for obs in first:  # observations match the declared features exactly
        assert set(obs) == set(env.features)
        for key, feature in env.features.items():
            assert obs[key].shape == feature.shape and obs[key].dtype == np.dtype(feature.dtype)
            assert env.observation_space[key].contains(obs[key]), (key, obs[key])
    env.close()


def test_pusht_image_variant_and_info() -> None:
    env = make_env("pusht", image=True)
    obs, info = env.reset(seed=100000)
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 5  # a real render, not a blank frame
    obs, _reward, _terminated, truncated, info = env.step(np.array([256.0, 256.0]))
    assert {"is_success", "score", "coverage", "max_coverage"} <= set(info)
    assert 0.0 <= info["score"] <= 1.0 and not truncated


def test_step_rejects_nan_actions() -> None:
    env = make_env("pointmaze-umaze")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0]))


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'pushy'; choose one of .*pusht"):
        make_env("pushy")
    assert {"pusht", "pointmaze-umaze", "lift", "can"} <= set(TASKS)


def _expert_episode(task: TaskConfig, seed: int) -> dict:
    env = make_env(task)
    expert = make_expert(task.name, np.random.default_rng(seed))
    _, info = env.reset(seed=seed)
    expert.reset(env)
    done, steps = False, 0
    while not done:
        _obs, _, terminated, truncated, info = env.step(expert.act(env))
        done, steps = terminated or truncated, steps + 1
    return {"success": info["is_success"], "score": info["score"], "steps": steps}


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_pointmaze_expert_reaches_the_goal(maze: str) -> None:
    task = TaskConfig(name=f"pointmaze-{maze}", env={"r_random": 0.0, "r_expert": 100.0})
    for seed in range(3):
        result = _expert_episode(task, seed)
        assert result["success"], f"{maze} seed {seed}"
        assert result["score"] > 50


def test_pusht_expert_succeeds() -> None:
    for seed in (100000, 100001):
        result = _expert_episode(TaskConfig(name="pusht"), seed)
        assert result["success"] and result["score"] == 1.0, f"seed {seed}: {result}"


def test_pusht_progress_reward_sums_to_the_coverage_gained_plus_one_on_success_and_success_is_sparse() -> None:
    """Same actions on both rewards: `coverage` pays gym-pusht's clipped coverage per step, `progress` its change."""
    seed, rewards, infos = 100000, {}, {}
    for kind in ("coverage", "progress", "success", "success_time"):
        env = make_env(TaskConfig(name="pusht", env={"reward": kind}))
        expert = make_expert("pusht", np.random.default_rng(seed))
        env.reset(seed=seed)
        expert.reset(env)
        start = env._clipped_coverage()
        rewards[kind], done = [], False
        while not done:
            _obs, reward, terminated, truncated, info = env.step(expert.act(env))
            rewards[kind].append(reward)
            done = terminated or truncated
        infos[kind] = info
    assert infos["progress"]["is_success"] and len(rewards["progress"]) == len(rewards["coverage"])
    gained = np.diff([start, *rewards["coverage"]])  # per step, from the same actions
    np.testing.assert_allclose(rewards["progress"], gained + np.eye(len(gained))[-1], atol=1e-9)
    assert sum(rewards["progress"]) == pytest.approx(rewards["coverage"][-1] - start + 1.0)
    assert rewards["success"] == [0.0] * (len(gained) - 1) + [1.0]  # sparse: only the succeeding step pays
    # the steps left at success, counting the succeeding one, as a share of the 300: DPPO's robomimic return
    steps = len(gained)
    assert rewards["success_time"] == [0.0] * (steps - 1) + [pytest.approx((300 - steps + 1) / 300)]
    with pytest.raises(ConfigError, match=r"env\.reward must be one of coverage, progress, success, success_time, got"):
        make_env(TaskConfig(name="pusht", env={"reward": "dense"}))


def test_expert_noise_changes_actions_but_not_the_clean_expert() -> None:
    env = make_env("pointmaze-umaze")
    actions = {}
    for noise in (0.0, 0.0, 0.3):
        env.reset(seed=3)
        expert = make_expert("pointmaze-umaze", np.random.default_rng(3), noise=noise)
        expert.reset(env)
        actions.setdefault(noise, []).append(expert.act(env))
    np.testing.assert_array_equal(actions[0.0][0], actions[0.0][1])
    assert not np.array_equal(actions[0.0][0], actions[0.3][0])


@pytest.mark.parametrize("name", ["lift", "can"])
def test_robosuite_reset_is_deterministic_and_expert_succeeds(name: str) -> None:
    task = TaskConfig(name=name)
    env = make_env(task)
    first, _ = env.reset(seed=3)
    env.reset(seed=4)
    again, _ = env.reset(seed=3)
    for key, feature in env.features.items():
        assert first[key].shape == feature.shape
        np.testing.assert_array_equal(first[key], again[key])
    assert env.action_feature.shape == (7,)
    env.close()
    result = _expert_episode(task, seed=0)
    assert result["success"] and result["score"] == 1.0, result


def test_robosuite_camera_observations() -> None:
    env = make_env("lift", image=True)
    obs, _ = env.reset(seed=0)
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        assert obs[key].shape == (84, 84, 3) and obs[key].dtype == np.uint8
        assert obs[key].std() > 5  # rendered, not blank
    env.close()


def test_pointmaze_score_bound_holds_for_fast_controllers() -> None:
    """benchmarks.experts.free_space_bound: no controller, not even a much stiffer expert, beats it."""
    from benchmarks.experts import free_space_bound
    from dpstack.envs.pointmaze_expert import PointMazeExpert

    task = TaskConfig(name="pointmaze-umaze")
    env = make_env(task)
    for seed in range(4):
        bound = free_space_bound(task, range(seed, seed + 1))
        for kp, kd in ((10.0, 1.0), (50.0, 3.0)):
            env.reset(seed=seed)
            expert = PointMazeExpert(np.random.default_rng(seed), offset=0.0, kp=kp, kd=kd)
            expert.reset(env)
            achieved = sum(env.step(expert.act(env))[1] for _ in range(env.max_steps))
            assert 0 < achieved <= bound < env.max_steps, (seed, kp, achieved, bound)
    env.close()
