"""The rollout harness: the evaluator's episodes unchanged, batched = per-env, autoreset, termination vs
truncation, extras stored, worker faults named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dpstack.envs.registry import make_env
from dpstack.errors import ConfigError
from dpstack.methods import load_policy
from dpstack.policy.chunk_env import _finite
from dpstack.policy.evaluate import EvalSpec, evaluate_policy
from dpstack.policy.rollout import TICK_KEY, ChunkEnv, RolloutError, Rollouts, RolloutSpec, check_worker_memory
from dpstack.tasks import TaskConfig

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pusht_eval"


@pytest.mark.parametrize("label", ["ddim3-2envs", "ddpm10-3envs", "ddim3-apt2-latency1"])
def test_evaluator_gives_the_same_episodes_as_before_the_harness(label: str) -> None:
    """Per-episode results recorded with the evaluator of commit 00fcbcc (tests/fixtures/pusht_eval)."""
    expected = json.loads((FIXTURE / "eval_episodes.json").read_text())
    case = expected[label]
    torch.set_num_threads(1)
    policy = load_policy(FIXTURE / "checkpoint")
    task = TaskConfig(name="pusht", max_steps=expected["task"]["max_steps"])
    spec = EvalSpec(task, case["episodes"], case["seed"], case["num_envs"], case["latency_steps"], videos=0)
    record = evaluate_policy(policy, spec, policy.make_sampler(case["sampler"]))
    for got, want in zip(record["per_episode"], case["per_episode"], strict=True):
        assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-6)
    if case["latency_steps"] == 0:
        assert record["nfe_per_action"] == pytest.approx(case["nfe_per_action"])
    else:  # the old loop also called the policy at each wave's last tick for a chunk that never ran:
        # 16 calls of 3 NFE per 30-tick wave then, 15 now (one per 2-action chunk)
        assert (case["nfe_per_action"], record["nfe_per_action"]) == pytest.approx((16 * 3 / 30, 15 * 3 / 30))


def _scripted(history: dict[str, np.ndarray], chunk: int = 4) -> np.ndarray:
    """A deterministic policy of the observation: push towards a point that depends on the agent."""
    agent = history["agent_pos"][:, -1]
    target = (agent * 0.8 + 60.0)[:, None, :]
    return np.repeat(target, chunk, axis=1).astype(np.float32)


def test_batched_rollouts_equal_one_env_at_a_time() -> None:
    task = TaskConfig(name="pusht", max_steps=30)
    with Rollouts(RolloutSpec(task, num_envs=3, n_obs_steps=2, actions_per_tick=4, vectorization="sync")) as batched:
        together = batched.evaluate(_scripted, episodes=3, seed=7)["episodes"]
    alone = []
    for seed in (7, 8, 9):
        with Rollouts(RolloutSpec(task, num_envs=1, n_obs_steps=2, actions_per_tick=4)) as single:
            alone += single.evaluate(_scripted, episodes=1, seed=seed)["episodes"]
    assert together == alone
    assert [e["seed"] for e in together] == [7, 8, 9] and all(e["steps"] == 30 for e in together)


def _hopper_policy(history: dict[str, np.ndarray]) -> np.ndarray:
    """Deterministic in the observation (so async and sync runs take the same actions): falls within ~30 steps."""
    state = history["state"][:, -1]
    return np.tanh(state[:, None, :3] * 3.0 + 0.5).astype(np.float32)


def test_async_workers_give_the_same_ticks_as_one_process() -> None:
    """The async path writes histories and tick records through shared memory (`TickObservationSpace`)."""
    task = TaskConfig(name="hopper", max_steps=30)
    batches = {}
    for mode in ("sync", "async"):
        spec = RolloutSpec(task, num_envs=3, n_obs_steps=2, actions_per_tick=1, vectorization=mode)
        with Rollouts(spec) as rollouts:
            batches[mode] = rollouts.collect(_hopper_policy, ticks=40, seed=5)
    sync, asynchronous = batches["sync"], batches["async"]
    assert sync.episodes == asynchronous.episodes and len(sync.episodes) >= 3
    for name in ("actions", "rewards", "terminated", "truncated"):
        assert torch.equal(getattr(sync, name), getattr(asynchronous, name)), name
    for name in ("obs", "final_obs", "next_obs"):
        assert torch.equal(getattr(sync, name)["state"], getattr(asynchronous, name)["state"]), name
    assert asynchronous.terminated.any()  # the episodes ended (and restarted) inside the workers


def test_the_vector_env_transports_match_gymnasiums() -> None:
    """`TickObservationSpace`'s shared-memory writes (several envs, interleaved) and sync rows land where
    gymnasium's own Dict code puts them."""
    import multiprocessing

    from gymnasium.vector.utils import (
        concatenate,
        create_empty_array,
        create_shared_memory,
        read_from_shared_memory,
        write_to_shared_memory,
    )

    env = ChunkEnv(make_env(TaskConfig(name="pusht", max_steps=5)), n_obs_steps=2, actions_per_tick=3)
    space = env.observation_space
    plain = gym.spaces.Dict(space.spaces)
    ours, theirs = (create_shared_memory(space, n=3, ctx=multiprocessing) for _ in range(2))
    rng = np.random.default_rng(0)
    sample = lambda: {k: rng.normal(size=s.shape).astype(s.dtype) for k, s in space.spaces.items()}  # noqa: E731
    for index in (2, 0, 0, 1, 2):
        value = sample()
        write_to_shared_memory(space, index, value, ours)
        write_to_shared_memory(plain, index, value, theirs)
        got, want = (read_from_shared_memory(plain, memory, n=3) for memory in (ours, theirs))
        for key in space.spaces:
            np.testing.assert_array_equal(got[key], want[key])
            np.testing.assert_array_equal(got[key][index], value[key])
    items = [sample() for _ in range(3)]
    got = concatenate(space, items, create_empty_array(space, n=3))
    want = concatenate(plain, items, create_empty_array(plain, n=3))
    assert got.keys() == want.keys()
    for key in space.spaces:
        np.testing.assert_array_equal(got[key], want[key])


def test_the_harness_sync_vector_env_steps_like_gymnasiums() -> None:
    """`TickSyncVectorEnv` (the harness's lean in-process step) returns what gymnasium's `SyncVectorEnv`
    returns over the same `ChunkEnv`s, episode ends (info) included."""
    from gymnasium.vector import AutoresetMode

    from dpstack.policy.rollout import TickSyncVectorEnv

    fns = [lambda: ChunkEnv(make_env(TaskConfig(name="pusht", max_steps=7)), 2, 3, 0, True, 3)] * 3
    envs = [
        cls(fns, copy=False, autoreset_mode=AutoresetMode.DISABLED)
        for cls in (TickSyncVectorEnv, gym.vector.SyncVectorEnv)
    ]
    for vector in envs:
        vector.reset(seed=[0, 1, 2])
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(6):
        chunk = rng.uniform(100, 400, size=(3, 3, 2)).astype(np.float32)
        (obs, rewards, terminated, truncated, info), want = (vector.step(chunk) for vector in envs)
        for key in want[0]:
            np.testing.assert_array_equal(obs[key], want[0][key])
        np.testing.assert_array_equal(rewards, want[1])
        assert not terminated.any() and not truncated.any() and not want[2].any() and not want[3].any()
        assert info.keys() == want[4].keys()
        for key in info:
            np.testing.assert_array_equal(info[key], want[4][key])
        ended += "episode_seed" in info
    assert ended >= 2  # episodes of 7 steps at 3 actions per tick end at ticks 3 and 5
    for vector in envs:
        vector.close()


def test_continuous_collect_autoresets_keeps_termination_apart_and_stores_extras() -> None:
    """Hopper falls (terminated) at different times per env; a 25-step limit truncates the rest."""
    task = TaskConfig(name="hopper", max_steps=25)
    spec = RolloutSpec(task, num_envs=3, n_obs_steps=1, actions_per_tick=4, vectorization="sync")
    rng = np.random.default_rng(0)

    def policy(history: dict[str, np.ndarray]):
        actions = rng.uniform(-1, 1, (3, 4, 3)).astype(np.float32)
        return actions, {"log_prob": torch.full((3,), float(history["state"][0, -1, 0]))}

    with Rollouts(spec) as rollouts:
        batch = rollouts.collect(policy, ticks=20, seed=11)
        again = rollouts.collect(policy, ticks=2)  # continues where the last call stopped
    assert batch.obs["state"].shape == (20, 3, 1, 11) and batch.actions.shape == (20, 3, 4, 3)
    assert batch.rewards.shape == (20, 3, 4) and batch.reward.shape == (20, 3)
    torch.testing.assert_close(batch.reward, batch.rewards.sum(dim=2))
    assert batch.extras["log_prob"].shape == (20, 3)
    torch.testing.assert_close(batch.extras["log_prob"][:, 0], batch.obs["state"][:, 0, -1, 0])
    assert not (batch.terminated & batch.truncated).any()
    ended = batch.terminated | batch.truncated
    assert len(batch.episodes) == int(ended.sum()) > 3
    for episode in batch.episodes:
        assert (episode["steps"] == 25) == (episode["steps"] % 4 == 1 and episode["steps"] == 25) or episode[
            "steps"
        ] < 25
    lengths = {e["seed"]: e["steps"] for e in batch.episodes}
    assert all(s in lengths for s in (11, 12, 13))  # env j starts on seed + j ...
    assert any(s >= 14 for s in lengths)  # ... and goes on with seed + j + N after an autoreset
    truncated_lengths = [e["steps"] for e in batch.episodes if e["steps"] == 25]
    assert int(batch.truncated.sum()) == len(truncated_lengths)
    # the history after an autoreset is the new episode's first observation, repeated
    t, i = map(int, torch.nonzero(ended)[0])
    if t + 1 < 20:
        first = batch.obs["state"][t + 1, i]
        assert torch.equal(first[0], first[-1])
    # the final history of an ended episode is kept for bootstrapping
    assert batch.final_obs["state"][t, i].abs().sum() > 0
    assert again.obs["state"].shape == (2, 3, 1, 11)
    assert batch.env_steps == int((batch.rewards != 0).sum())


def test_the_tick_record_travels_with_the_observation_and_info_stays_empty_until_an_episode_ends() -> None:
    """A vector env pickles and merges info per env and step; the harness keeps it empty on ordinary steps."""
    env = ChunkEnv(make_env(TaskConfig(name="pointmaze-umaze", max_steps=3)), n_obs_steps=1, actions_per_tick=2)
    obs, _ = env.reset(seed=0)
    assert obs[TICK_KEY].shape == (4 + 2 * 2,) and env.observation_space.contains(obs)
    obs, reward, _, _, info = env.step(np.zeros((2, 2), np.float32))
    assert info == {}
    executed, offset, terminated, truncated = obs[TICK_KEY][:4]
    assert (executed, offset, terminated, truncated) == (2, 0, 0, 0)
    assert obs[TICK_KEY][4:6].sum() == pytest.approx(reward)
    obs, _, _, _, info = env.step(np.zeros((2, 2), np.float32))  # step 3 of 3: the episode ends after one action
    assert tuple(obs[TICK_KEY][:4]) == (1, 0, 0, 1) and info["episode_length"] == 3


def test_a_nan_observation_names_the_task_seed_and_key() -> None:
    env = ChunkEnv(make_env("pointmaze-umaze"), n_obs_steps=1, actions_per_tick=2)
    env.reset(seed=3)
    task_env = env.env
    good = task_env._convert
    task_env._convert = lambda raw: {**good(raw), "state": np.full(4, np.nan)}  # the simulator's output goes bad
    with pytest.raises(RolloutError, match=r"task pointmaze-umaze, seed 3, step 1: observation 'state' is not finite"):
        env.step(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(
    ("value", "finite"),
    [
        (np.array([1.0, -2.0, 3.0], np.float32), True),
        (np.array([3e20, 1.0], np.float32), True),  # finite, though its square overflows float32
        (np.array([1.0, np.nan], np.float32), False),
        (np.array([np.inf, 0.0]), False),
        (np.array([-np.inf]), False),
        (np.ones((2, 3), np.float32), True),
        (np.array([[0.0, np.nan]], np.float32), False),
        (np.zeros(0, np.float32), True),
    ],
)
def test_the_finiteness_check_matches_numpy(value: np.ndarray, finite: bool) -> None:
    assert _finite(value) is finite and bool(np.isfinite(value).all()) is finite


def test_an_evaluation_whose_envs_stop_reporting_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envs that all idle while episodes have not reported their end (a broken transport) end the evaluation."""

    def silent_step(self: ChunkEnv, chunk: np.ndarray):
        return {**self.history.buffers(), TICK_KEY: np.zeros(self._tick_size, np.float32)}, 0.0, False, False, {}

    monkeypatch.setattr(ChunkEnv, "step", silent_step)
    spec = RolloutSpec(TaskConfig(name="pointmaze-umaze", max_steps=20), 2, 1, 2, vectorization="sync")
    calls = []

    def policy(history: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(1)
        assert len(calls) < 50, "the evaluation would never end"  # without the check: fail, do not hang
        return np.zeros((2, 2, 2), np.float32)

    with Rollouts(spec) as rollouts, pytest.raises(RolloutError, match=r"seeds \[3, 4\] stopped without ending"):
        rollouts.evaluate(policy, episodes=2, seed=3)


def test_a_dead_worker_is_an_error_naming_the_task() -> None:
    spec = RolloutSpec(TaskConfig(name="pointmaze-umaze", max_steps=20), num_envs=2, n_obs_steps=1, actions_per_tick=2)
    rollouts = Rollouts(spec)
    try:
        rollouts.collect(lambda h: np.zeros((2, 2, 2), np.float32), ticks=1)
        os.kill(rollouts._envs.processes[1].pid, 9)
        with pytest.raises(RolloutError, match=r"task pointmaze-umaze: an env worker failed \(seeds \[0, 1\]\)"):
            rollouts.collect(lambda h: np.zeros((2, 2, 2), np.float32), ticks=3)
    finally:
        rollouts.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a worker's memory map (Linux)")
def test_env_worker_processes_load_no_torch() -> None:
    """A worker unpickles only the torch-free half of the harness (~0.1 GB less per Push-T or MuJoCo worker)."""
    spec = RolloutSpec(TaskConfig(name="pusht", max_steps=20), num_envs=2, n_obs_steps=1, actions_per_tick=2)
    with Rollouts(spec) as rollouts:
        rollouts.collect(lambda h: np.full((2, 2, 2), 256.0, np.float32), ticks=1)
        for process in rollouts._envs.processes:
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            assert "pymunk" in maps or "chipmunk" in maps  # the map is the worker's: its simulator is loaded
            assert "libtorch" not in maps


def test_async_workers_that_would_not_fit_in_memory_are_refused_up_front() -> None:
    with pytest.raises(ConfigError, match=r"task lift: vectorization=async with num_envs=40 .* use vectorization=sync"):
        check_worker_memory("lift", 40, available_mb=23 * 1024)
    check_worker_memory("lift", 8, available_mb=23 * 1024)  # ~5.5 GB: fits
    check_worker_memory("pusht", 40, available_mb=23 * 1024)
    check_worker_memory("lift", 1000, available_mb=None)  # memory not known: not checked


def test_an_evaluation_of_no_episodes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^episodes=0 must be >= 1$"):
        EvalSpec(TaskConfig(name="pusht"), episodes=0, num_envs=2, videos=0)
    with pytest.raises(ValueError, match=r"^num_envs=0 must be >= 1$"):
        EvalSpec(TaskConfig(name="pusht"), episodes=2, num_envs=0, videos=0)
    with pytest.raises(ValueError, match=r"^videos=-1 must be >= 0$"):
        EvalSpec(TaskConfig(name="pusht"), episodes=2, num_envs=2, videos=-1)
