"""Shared fixtures: small episode stores built in the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpstack.data.store import EpisodeStore
from dpstack.envs.collect import collect
from dpstack.envs.registry import load_task_config, make_env
from dpstack.methods import load_policy
from dpstack.policy.diffusion_policy import PolicyConfig
from dpstack.policy.export import export_policy
from dpstack.policy.samplers import DDIMOptions, DDPMOptions, RTIOptions, StreamingOptions
from dpstack.tasks import TaskConfig
from dpstack.train import TrainConfig, train

MAZE = load_task_config("pointmaze-umaze", ["max_steps=150"])


def make_episode(index: int, length: int, image: bool = False) -> dict[str, np.ndarray]:
    """Deterministic episode whose values encode (episode, step), so tests can check every row."""
    steps = np.arange(length, dtype=np.float32)
    episode = {
        "action": np.stack([steps, np.full(length, index, np.float32)], axis=1),
        "state": np.stack([steps * 10 + index, -steps, np.full(length, 3.0, np.float32)], axis=1),
    }
    if image:
        episode["image"] = np.broadcast_to(
            ((np.arange(length) + 7 * index) % 256).astype(np.uint8)[:, None, None, None], (length, 8, 8, 3)
        ).copy()
    return episode


@pytest.fixture
def small_store(tmp_path: Path) -> EpisodeStore:
    """Three episodes of lengths 5, 3, 7 with action, state and a tiny image key."""
    store = EpisodeStore.create(tmp_path / "small.zarr", chunk_bytes=256)
    for index, length in enumerate([5, 3, 7]):
        store.append_episode(make_episode(index, length, image=True))
    return store


@pytest.fixture(scope="session")
def maze_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 expert PointMaze U-maze episodes (150-step limit), shared by the training and export tests."""
    path = tmp_path_factory.mktemp("maze") / "maze.zarr"
    collect(MAZE, episodes=30, out=path, progress=False)
    return path


def train_config(store: Path, out: Path, **kwargs) -> TrainConfig:
    """A short, quiet single-thread training run on `store` (MLP policy unless `policy=` is given)."""
    policy = kwargs.pop("policy", PolicyConfig(denoiser="mlp", preset="small"))
    base = dict(
        task=MAZE,
        policy=policy,
        dataset=str(store),
        out=str(out),
        steps=60,
        batch_size=32,
        warmup_steps=10,
        eval_episodes=0,
        val_every=30,
        checkpoint_every=30,
        progress=False,
        threads=1,
    )
    return TrainConfig(**{**base, **kwargs})


# A tiny streaming-trained U-Net exported with three samplers: shared by the export and ROS tests.
EXPORT_SAMPLERS = {
    "ddim": DDIMOptions(num_inference_steps=3),
    "ddpm-mean": DDPMOptions(num_inference_steps=3, deterministic=True),  # each step's posterior mean (no noise at all)
    "streaming": StreamingOptions(num_inference_steps=3),  # 3 chunks, one call per tick
    "rti": RTIOptions(first="ddim", num_inference_steps=3, timesteps=[1, 0]),
}


@pytest.fixture(scope="session")
def trained(maze_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny streaming-trained U-Net on the maze store (state + goal observations)."""
    run = tmp_path_factory.mktemp("export") / "run"
    policy = PolicyConfig(denoiser="unet", preset="tiny", n_action_steps=5, noise_mode="streaming")
    cfg = train_config(maze_store, run, steps=30, batch_size=16, warmup_steps=5, policy=policy)
    train(cfg)
    return run


@pytest.fixture(scope="session")
def exports(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    policy = load_policy(trained)
    out = {}
    for name, cfg in EXPORT_SAMPLERS.items():
        out[name] = tmp_path_factory.mktemp(f"onnx-{name}")
        export_policy(policy, policy.make_sampler(cfg), out[name], [-1, -1], [1, 1], 100.0, {"name": MAZE.name})
    return out


HOPPER = TaskConfig(name="hopper", max_steps=200)


@pytest.fixture(scope="session")
def weak_hopper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Diffusion Policy cloned from uniformly random Hopper actions (it falls within ~20 steps)."""
    root = tmp_path_factory.mktemp("dppo")
    store = EpisodeStore.create(root / "random.zarr")
    env, rng = make_env(HOPPER), np.random.default_rng(0)
    for episode in range(60):
        obs, _ = env.reset(seed=episode)
        rows: dict[str, list] = {"state": [], "action": [], "reward": []}
        done = False
        while not done:
            action = rng.uniform(-1, 1, 3).astype(np.float32)
            rows["state"].append(obs["state"])
            rows["action"].append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rows["reward"].append(np.float32(reward))
            done = terminated or truncated
        store.append_episode({k: np.stack(v) for k, v in rows.items()})
    store.set_attrs(collect={"task": "hopper"})
    policy = PolicyConfig(denoiser="mlp", preset="tiny", horizon=4, n_obs_steps=1, n_action_steps=4,
                          num_train_timesteps=10)  # fmt: skip
    cfg = TrainConfig(task=HOPPER, policy=policy, dataset=str(root / "random.zarr"), out=str(root / "bc"),
                      steps=200, batch_size=64, warmup_steps=10, eval_episodes=0, val_every=200,
                      checkpoint_every=200, progress=False, threads=1)  # fmt: skip
    train(cfg)
    return root / "bc"
