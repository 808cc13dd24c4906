"""Collect expert demonstrations into an episode store, in parallel, resumably.

Episode k of a collection is the expert run on seed ``seed + k`` (skipping seeds already stored or
already failed), so a collection is reproducible and an interrupted one resumes by re-running the
same command: whole episodes are committed one at a time (see `dpstack.data.store`), and the seeds
already stored are read back from the store's ``seed`` key.

Stored keys per step: every observation key of the task, ``action``, ``reward``, ``success`` (the
success latched so far in the episode) and ``seed``.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dpstack.data.store import EpisodeStore
from dpstack.envs.registry import make_env, make_expert, task_spec
from dpstack.errors import StoreError
from dpstack.tasks import TaskConfig

_worker_env: Any = None
_worker_task: TaskConfig | None = None


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    score: float
    steps: int
    cpu_s: float
    data: dict[str, np.ndarray]
    final_info: dict[str, float]  # the scalar entries of the last step's info


def run_expert_episode(env: Any, task: TaskConfig, seed: int, noise: float) -> EpisodeResult:
    """Roll out the task's expert from `env.reset(seed=seed)`; observations are those before each action."""
    start = time.process_time()
    expert = make_expert(task.name, np.random.default_rng([seed, 1]), noise=noise)
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    steps: dict[str, list] = {key: [] for key in [*obs, "action", "reward", "success"]}
    done = False
    while not done:
        action = np.asarray(expert.act(env), dtype=np.float32)
        for key, value in obs.items():
            steps[key].append(value)
        obs, reward, terminated, truncated, info = env.step(action)
        steps["action"].append(action)
        steps["reward"].append(np.float32(reward))
        steps["success"].append(bool(info["is_success"]))
        done = terminated or truncated
    data = {key: np.asarray(values) for key, values in steps.items()}
    data["seed"] = np.full(len(data["action"]), seed, dtype=np.int64)
    scalars = {k: float(v) for k, v in info.items() if isinstance(v, int | float | bool | np.number)}
    return EpisodeResult(
        seed,
        bool(info["is_success"]),
        float(info["score"]),
        len(data["action"]),
        time.process_time() - start,
        data,
        scalars,
    )


def _setup_env(task: TaskConfig) -> None:
    global _worker_env, _worker_task
    _worker_task = task
    _worker_env = make_env(task)


def _init_worker(task: TaskConfig) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _setup_env(task)


def _worker_episode(args: tuple[int, float]) -> EpisodeResult:
    seed, noise = args
    assert _worker_task is not None
    return run_expert_episode(_worker_env, _worker_task, seed, noise)


def check_compatible(store: EpisodeStore, settings: dict[str, Any]) -> dict[str, Any]:
    """The store's earlier collection settings; an error naming the first one that differs from `settings`."""
    previous = store.info()["attrs"].get("collect")
    if previous is None:
        if store.n_episodes:
            raise StoreError(f"{store.path}: holds episodes that were not made by `dpstack collect`; use a new out")
        return {"failed_seeds": []}
    for key, value in settings.items():
        if key in previous and previous[key] != value:  # (stores made before a setting was recorded lack it)
            raise StoreError(
                f"{store.path}: was collected with {key}={previous.get(key)!r}, not {value!r}; "
                "resume with the same settings or choose a new out"
            )
    return previous


def collect(
    task: TaskConfig,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    noise: float = 0.0,
    keep_failed: bool = False,
    max_attempts: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Store `episodes` expert episodes of `task` in `out` (created, or resumed if it exists).

    Returns a summary: episodes stored, attempts, success rate and mean score of the attempts made in
    this call, mean steps, CPU seconds per episode, and whether it was interrupted.
    """
    if episodes < 1 or workers < 1:
        raise ValueError(f"episodes and workers must be >= 1, got {episodes} and {workers}")
    task_spec(task)  # bad env arguments fail here, in one line, before any worker or store exists
    out = Path(out)
    store = EpisodeStore.open(out, mode="a") if out.exists() else EpisodeStore.create(out)
    settings = {
        "task": task.name,
        "image": task.image,
        "max_steps": task.max_steps,
        "noise": noise,
        "keep_failed": keep_failed,
        "seed": seed,
        "env": dict(task.env),  # env arguments such as reset_target change the data too
    }
    record = check_compatible(store, settings)
    done_seeds = set(np.unique(store.read("seed")).tolist()) if store.n_episodes else set()
    failed_seeds = set(record.get("failed_seeds", []))
    needed = episodes - store.n_episodes
    limit = max_attempts if max_attempts is not None else 3 * episodes + 10
    store.set_attrs(collect={**settings, "failed_seeds": sorted(failed_seeds)})

    def candidates() -> Iterator[tuple[int, float]]:
        s = seed
        for _ in range(limit):
            while s in done_seeds or s in failed_seeds:
                s += 1
            yield s, noise
            s += 1

    results: list[EpisodeResult] = []
    interrupted = False
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        # The first Ctrl-C lets the episode in hand be committed, then stops; a second one aborts now
        # (the store stays consistent either way, see dpstack.data.store).
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, request_stop) if in_main_thread else None
    bar = tqdm(total=episodes, initial=store.n_episodes, desc=f"collect {task.name}", unit="ep", disable=not progress)
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (task,)) if workers > 1 and needed > 0 else None
    try:
        if needed > 0:
            if pool is not None:
                stream = pool.imap(_worker_episode, candidates())
            else:
                _setup_env(task)
                stream = map(_worker_episode, candidates())
            for result in stream:
                results.append(result)
                if result.success or keep_failed:
                    store.append_episode(result.data)
                    bar.update(1)
                else:
                    failed_seeds.add(result.seed)  # remembered so a resumed run does not retry it
                    store.set_attrs(collect={**settings, "failed_seeds": sorted(failed_seeds)})
                bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
                if store.n_episodes >= episodes:
                    break
                if stop.is_set():
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return {
        "out": str(out),
        "task": task.name,
        "episodes_stored": store.n_episodes,
        "episodes_requested": episodes,
        "attempts": len(results),
        "success_rate": float(np.mean([r.success for r in results])) if results else None,
        "mean_score": float(np.mean([r.score for r in results])) if results else None,
        "mean_steps": float(np.mean([r.steps for r in results])) if results else None,
        "cpu_s_per_episode": float(np.mean([r.cpu_s for r in results])) if results else None,
        "interrupted": interrupted,
        "settings": asdict(task) | {k: v for k, v in settings.items() if k != "task"},
    }
