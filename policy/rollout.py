"""The rollout harness: one path from a policy to N simulators, shared by evaluation and RL.

The unit of the harness is a control tick of the policy: every env executes one action chunk per tick
(`ChunkEnv`), so all N envs need their next chunk at the same moment and the policy runs once per tick
on the batch of N observation histories, even though the envs' episodes end and restart at different
times. Each env keeps its own observation history and latency offset, so an env that resets never
disturbs the others.

    spec = RolloutSpec(task, num_envs=8, n_obs_steps=2, actions_per_tick=8)
    with Rollouts(spec) as rollouts:
        record = rollouts.evaluate(session, episodes=50, seed=100000)      # waves of fixed seeds
        batch = rollouts.collect(policy_fn, ticks=64)                      # continuous, for RL

Two ways to schedule episodes:

- `evaluate` runs waves: episode i on seed ``seed + i``; all N envs start a wave together and an env
  that finishes early idles (its rows are still computed, so the policy's batch and noise draws do not
  depend on when episodes end). This is the evaluator's protocol, episode for episode.
- `collect` runs continuously: an env that finishes resets at once, on its next seed (env j runs seeds
  ``seed + j, seed + j + N, ...``), within the same tick; the tick reports ``terminated`` and
  ``truncated`` apart and keeps the final observation history for bootstrapping on truncation.

Latency (``latency_steps`` d, see `dpstack.policy.execution`): the history a tick returns is the one d
steps before the chunk ends, and the next chunk's first d actions are skipped (their steps were
executed by the previous chunk); an episode's first chunk starts at index 0. This is
`RecedingHorizon`'s schedule, one chunk at a time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from dpstack.envs.registry import worker_memory_mb
from dpstack.errors import ConfigError
from dpstack.policy.chunk_env import (  # re-exported: the harness's public names live in one import
    EXTRA_INFO_KEYS,
    TICK_KEY,
    ChunkEnv,
    RolloutError,
    TickSyncVectorEnv,
    unpack_tick,
)
from dpstack.tasks import TaskConfig

__all__ = [
    "EXTRA_INFO_KEYS",
    "TICK_KEY",
    "ChunkEnv",
    "PolicyFn",
    "RolloutBatch",
    "RolloutError",
    "RolloutSpec",
    "Rollouts",
    "TickSyncVectorEnv",
    "check_worker_memory",
    "unpack_tick",
]


@dataclass
class RolloutSpec:
    """What to roll out: the task, how many envs, and the policy's timing (one spec instead of loose arguments).

    Attributes:
        task: the task config (`configs/task/<name>.yaml`).
        num_envs: simulators stepped in parallel.
        n_obs_steps: observations per history the policy sees.
        actions_per_tick: actions executed per policy call (the chunk each tick executes).
        latency_steps: ticks between an observation and its chunk taking effect (see the module doc).
        vectorization: "async" (one worker process per env) or "sync" (all in this process; tests, N = 1).
    """

    task: TaskConfig
    num_envs: int = 1
    n_obs_steps: int = 2
    actions_per_tick: int = 8
    latency_steps: int = 0
    vectorization: str = "async"

    def __post_init__(self) -> None:
        if self.num_envs < 1 or self.actions_per_tick < 1 or self.n_obs_steps < 1:
            raise ValueError("num_envs, actions_per_tick and n_obs_steps must be >= 1")
        if self.vectorization not in ("async", "sync"):
            raise ValueError(f"vectorization must be async or sync, got {self.vectorization!r}")


@dataclass
class RolloutBatch:
    """`ticks` control ticks of N envs (all tensors are (T, N, ...), T = ticks).

    obs: {key: (T, N, To, ...)} the histories each tick's chunk was computed from.
    actions: (T, N, A, Da) the executed part of each chunk (A = actions_per_tick).
    rewards: (T, N, A) reward per env step (0 after an episode's end); reward: (T, N) their sum.
    terminated, truncated: (T, N) how an episode ended at that tick (bootstrap on truncation only).
    final_obs: {key: (T, N, To, ...)} the last history of an episode that ended at that tick.
    next_obs: {key: (N, To, ...)} the histories after the last tick (for the value of the next state).
    extras: {name: (T, N, ...)} what the policy returned beside its actions (e.g. DPPO's chain).
    episodes: the episodes that ended (seed, return, length, success, score, extras).
    """

    obs: dict[str, torch.Tensor]
    actions: torch.Tensor
    rewards: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: dict[str, torch.Tensor]
    next_obs: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    env_steps: int = 0  # simulator steps executed in these ticks


PolicyFn = Callable[[dict[str, np.ndarray]], Any]  # histories -> actions (N, A', Da) or (actions, extras)


class Rollouts:
    """N task envs created once and reused; see the module docstring."""

    def __init__(self, spec: RolloutSpec) -> None:
        self.spec = spec
        self._make = lambda continuous: functools.partial(  # a module-level reference: workers load no torch
            ChunkEnv.for_task,
            spec.task,
            spec.n_obs_steps,
            spec.actions_per_tick,
            spec.latency_steps,
            continuous,
            spec.num_envs,
        )
        self._envs: gym.vector.VectorEnv | None = None
        self._continuous: bool | None = None
        self._next_obs: dict[str, np.ndarray] | None = None

    def _vector(self, continuous: bool) -> gym.vector.VectorEnv:
        """The vector env, built once (and rebuilt only to switch between waves and continuous episodes).

        It does not copy its observations (``copy=False``: its buffer changes with the next step); a
        policy reads them within its tick, and `collect` copies the ones it keeps.
        """
        if self._envs is not None and self._continuous == continuous:
            return self._envs
        self.close()
        fns = [self._make(continuous)] * self.spec.num_envs
        if self.spec.vectorization == "sync" or self.spec.num_envs == 1:
            self._envs = TickSyncVectorEnv(fns, copy=False, autoreset_mode=AutoresetMode.DISABLED)
        else:
            check_worker_memory(self.spec.task.name, self.spec.num_envs, _available_memory_mb())
            self._envs = gym.vector.AsyncVectorEnv(
                fns, context="spawn", copy=False, autoreset_mode=AutoresetMode.DISABLED
            )
        self._continuous = continuous
        return self._envs

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
        self._envs, self._continuous, self._next_obs = None, None, None

    def _abandon(self) -> None:
        """After a worker failed: stop every worker without talking to them (a dead one never answers)."""
        envs, self._envs, self._continuous, self._next_obs = self._envs, None, None, None
        if isinstance(envs, gym.vector.AsyncVectorEnv):
            for process in envs.processes:
                if process.is_alive():
                    process.kill()
            envs.closed = True  # nothing left to close politely; skip gymnasium's close handshake
            for pipe in envs.parent_pipes:
                pipe.close()
        elif envs is not None:
            envs.close()

    def __enter__(self) -> Rollouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(
        self, envs: gym.vector.VectorEnv, chunk: np.ndarray, seeds: list[int] | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
        """One tick of every env with `chunk` from `_chunk`: (histories, tick records (N, 4 + 2A) (see
        `unpack_tick`), infos); infos is empty unless an episode ended."""
        try:
            obs, _, _, _, infos = envs.step(chunk)
            return _histories(obs), obs[TICK_KEY].copy(), infos  # the vector env's buffer changes next step
        except RolloutError:
            self._abandon()
            raise
        except Exception as exc:  # a worker that raised or died
            self._abandon()
            where = f" (seeds {seeds})" if seeds else ""
            raise RolloutError(
                f"task {self.spec.task.name}: an env worker failed{where}: {type(exc).__name__}: {exc}"
            ) from exc

    def _chunk(self, actions: Any) -> np.ndarray:
        """The policy's actions as the (N, latency + A, Da) float32 chunk every env executes part of."""
        if torch.is_tensor(actions):
            actions = actions.detach().cpu().numpy()
        actions = np.asarray(actions)
        width = self.spec.latency_steps + self.spec.actions_per_tick
        if actions.ndim != 3 or actions.shape[0] != self.spec.num_envs or actions.shape[1] < width:
            raise ValueError(
                f"the policy must return (N={self.spec.num_envs}, A >= {width}, Da) actions "
                f"(latency {self.spec.latency_steps} + {self.spec.actions_per_tick} per tick), got {actions.shape}"
            )
        return np.ascontiguousarray(actions[:, :width], dtype=np.float32)

    # ------------------------------------------------------------------ evaluation: waves of fixed seeds
    def evaluate(
        self,
        source: PolicyFn,
        episodes: int,
        seed: int,
        video_dir: Path | None = None,
        videos: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Run `episodes` episodes on seeds seed, seed + 1, ...; per-episode results and per-tick times (ms).

        `source` (histories -> actions) is reset (if it has `reset()`) at the start of every wave.
        """
        envs = self._vector(continuous=False)
        n = self.spec.num_envs
        results: list[dict[str, Any]] = []
        ticks_ms: list[float] = []
        inference_ms: list[float] = []
        video_paths: list[str] = []
        for wave_start in range(0, episodes, n):
            seeds = [seed + wave_start + i for i in range(n)]
            record = [video_dir is not None and wave_start + i < min(videos, episodes) for i in range(n)]
            envs.set_attr(
                "video_path",
                [str(video_dir / f"episode_{wave_start + i:03d}") if record[i] else None for i in range(n)],
            )
            obs = _histories(envs.reset(seed=seeds)[0])
            if hasattr(source, "reset"):
                source.reset()
            final: list[dict[str, Any] | None] = [None] * n
            while any(f is None for f in final):
                start = time.perf_counter()
                chunk = self._chunk(_actions(source(obs)))
                elapsed = (time.perf_counter() - start) * 1000
                obs, tick, infos = self._step(envs, chunk, seeds)
                infos.update(unpack_tick(tick, self.spec.actions_per_tick))
                terminated, truncated = infos["terminated"], infos["truncated"]
                if not infos["executed"].any():  # every env idles, yet an episode never reported its end
                    raise RolloutError(
                        f"task {self.spec.task.name}: the episodes on seeds "
                        f"{[s for s, f in zip(seeds, final, strict=True) if f is None]} stopped without ending"
                    )
                running = int(infos["executed"].max())
                ticks_ms.append(elapsed + float(infos["select_ms"][:, 0].max()))
                ticks_ms.extend(float(v) for v in infos["select_ms"][:, 1:running].max(axis=0))
                inference_ms.append(elapsed)
                for i in np.flatnonzero(terminated | truncated):
                    final[i] = _episode(infos, i)
                    if "episode_video" in infos and infos["_episode_video"][i]:
                        video_paths.append(str(infos["episode_video"][i]))
            results.extend(r for r in final[: min(n, episodes - wave_start)] if r is not None)
            if progress:
                rate = np.mean([r["success"] for r in results])
                print(f"  {len(results)}/{episodes} episodes, success so far {rate:.2f}", flush=True)
        return {"episodes": results, "ticks_ms": ticks_ms, "inference_ms": inference_ms, "videos": sorted(video_paths)}

    # ------------------------------------------------------------------ RL: continuous episodes
    def collect(self, policy: PolicyFn, ticks: int, seed: int = 0) -> RolloutBatch:
        """`ticks` control ticks of all N envs; an env whose episode ends resets at once on its next seed.

        The first call resets env j on seed ``seed + j``; later calls continue where the last one stopped
        (an RL iteration after another). `policy(histories)` returns actions (N, A', Da), or
        (actions, extras) with extras {name: (N, ...)} stored per tick.
        """
        envs = self._vector(continuous=True)
        n = self.spec.num_envs
        if self._next_obs is None:
            self._seeds = [seed + j for j in range(n)]  # each env's current episode, for error messages
            self._next_obs = _histories(envs.reset(seed=self._seeds)[0])
        obs_ticks: list[dict[str, np.ndarray]] = []
        chunks: list[np.ndarray] = []
        tick_records: list[np.ndarray] = []
        finals: list[tuple[int, int, dict[str, np.ndarray]]] = []  # (tick, env, last history) of ended episodes
        extras: dict[str, list] = {}
        episodes: list[dict[str, Any]] = []
        # per tick only what cannot wait (the step, the episodes that ended); the records are unpacked once,
        # for all ticks together, after the loop: this loop's own cost is per tick, shared by N env steps
        for t in range(ticks):
            obs = {k: v.copy() for k, v in self._next_obs.items()}  # the vector env reuses its buffers
            out = policy(obs)
            actions, extra = out if isinstance(out, tuple) else (out, {})
            chunk = self._chunk(actions)
            self._next_obs, tick, infos = self._step(envs, chunk, self._seeds)
            obs_ticks.append(obs)
            chunks.append(chunk)
            tick_records.append(tick)
            for name, value in extra.items():
                extras.setdefault(name, []).append(torch.as_tensor(value))
            if infos:  # an episode ended (a ChunkEnv's info is empty otherwise)
                ended = unpack_tick(tick, self.spec.actions_per_tick)
                for i in np.flatnonzero(ended["terminated"] | ended["truncated"]):
                    episodes.append(_episode(infos, i))
                    finals.append((t, i, {k: infos[f"final_{k}"][i] for k in obs}))
                    self._seeds[i] = episodes[-1]["seed"] + n
        final_obs = {k: np.zeros((ticks, *v.shape), v.dtype) for k, v in obs_ticks[0].items()}
        for t, i, history in finals:
            for k, v in history.items():
                final_obs[k][t, i] = v
        record = unpack_tick(np.stack(tick_records), self.spec.actions_per_tick)  # (T, N, ...)
        executed_index = record["offset"][..., None] + np.arange(self.spec.actions_per_tick)  # (T, N, A)
        rewards = np.ascontiguousarray(record["rewards"])
        batch = RolloutBatch(
            obs={k: torch.as_tensor(np.stack([o[k] for o in obs_ticks])) for k in obs_ticks[0]},
            actions=torch.as_tensor(np.take_along_axis(np.stack(chunks), executed_index[..., None], axis=2)),
            rewards=torch.as_tensor(rewards),
            reward=torch.as_tensor(rewards.sum(axis=2)),
            terminated=torch.as_tensor(record["terminated"]),
            truncated=torch.as_tensor(record["truncated"]),
            final_obs={k: torch.as_tensor(v) for k, v in final_obs.items()},
            next_obs={k: torch.as_tensor(v.copy()) for k, v in self._next_obs.items()},
            extras={k: torch.stack(v) for k, v in extras.items()},
            episodes=episodes,
            env_steps=int(record["executed"].sum()),
        )
        return batch


def check_worker_memory(task: str, num_envs: int, available_mb: float | None) -> None:
    """Refuse to start `num_envs` worker processes that would not fit in memory (the kernel would kill the
    run mid-way with no message); `available_mb` None (not known on this system) skips the check."""
    per_worker = worker_memory_mb(task)
    if available_mb is not None and num_envs * per_worker > 0.9 * available_mb:
        raise ConfigError(
            f"task {task}: vectorization=async with num_envs={num_envs} starts {num_envs} worker processes of "
            f"~{per_worker / 1024:.2f} GB each (~{num_envs * per_worker / 1024:.1f} GB), but this machine has "
            f"{available_mb / 1024:.1f} GB available; use vectorization=sync (all envs in this process, one "
            f"simulator's imports) or fewer num_envs"
        )


def _available_memory_mb() -> float | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _histories(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A vector env's observation without the tick record: what the policy sees."""
    return {k: v for k, v in obs.items() if k != TICK_KEY}


def _actions(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _episode(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """The evaluator's per-episode record of env i from a tick's infos."""
    record = {
        "seed": int(infos["episode_seed"][i]),
        "success": bool(infos["episode_success"][i]),
        "score": float(infos["episode_score"][i]),
        "steps": int(infos["episode_length"][i]),
        "return": float(infos["episode_return"][i]),
    }
    for key in EXTRA_INFO_KEYS:
        name = f"episode_{key}"
        if name in infos and infos[f"_{name}"][i]:
            record[key] = float(infos[name][i])
    return record
