"""One control tick as one env step: the per-env half of the rollout harness (`dpstack.policy.rollout`).

`ChunkEnv` wraps a task env so that `step` executes one action chunk, keeps the env's own observation
history, checks every observation and reward, and reports the tick in a packed record. It runs inside the
env worker processes, so this module imports no PyTorch: a worker then loads gymnasium, numpy and its
simulator only (~0.1 GB less memory per Push-T or MuJoCo worker, and no torch import at every spawn), and
the ROS 2 simulator bridge reads the episode fields from here without PyTorch either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, write_to_shared_memory

from dpstack.envs.registry import make_env
from dpstack.errors import UserError
from dpstack.policy.execution import ObservationHistory
from dpstack.tasks import TaskConfig

EXTRA_INFO_KEYS = ("max_coverage", "return")  # task-specific per-episode extras kept beside success and score
# The tick's packed record travels as one more observation key (shared memory between async workers), not
# in info: a vector env pickles each env's info through a pipe and merges it key by key, every step (~25 us
# per env step for this array, against ~1 us for an empty info). Info carries only an episode's end.
TICK_KEY = "_tick"


class RolloutError(UserError, RuntimeError):
    """An env worker that raised or died, or a non-finite observation or reward; names the task, seed and key."""


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """mp4 through imageio-ffmpeg; falls back to gif if no encoder is available."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        imageio.mimwrite(path.with_suffix(".mp4"), frames, fps=fps, macro_block_size=1)
        return path.with_suffix(".mp4")
    except (ImportError, RuntimeError, OSError, ValueError):
        imageio.mimwrite(path.with_suffix(".gif"), frames, duration=1000 / fps)
        return path.with_suffix(".gif")


class TickObservationSpace(gym.spaces.Dict):
    """`ChunkEnv`'s observation space: a gymnasium Dict that a vector env moves faster (the two functions below,
    registered with gymnasium's dispatch for this space only); everything else is the Dict's.

    A vector env moves every env's observation at every env step, and one-action ticks make that the
    harness's main per-step cost next to a MuJoCo step: gymnasium's Dict code wraps each key's whole
    shared-memory buffer in a new numpy array per write and stacks the per-env observations with `np.stack`
    per key (development timings, not a repository benchmark: ~4 us per key and write, ~1-2 us per env step
    for Hopper's two keys at N = 16; the effect on the harness is in `python -m benchmarks.rollout`).
    """

    _views: tuple[Any, int, list[tuple[str, np.ndarray]]] | None = None  # (shared memory, env index, views)


@write_to_shared_memory.register(TickObservationSpace)
def _write_tick_observation(
    space: TickObservationSpace, index: int, values: Mapping[str, np.ndarray], shared_memory: Mapping[str, Any]
) -> None:
    """An async worker's write of env `index`'s observation: gymnasium's Dict writer, with the views into the
    buffers made once per worker instead of once per step."""
    cached = space._views
    if cached is None or cached[0] is not shared_memory or cached[1] != index:
        views = []
        for key, subspace in space.spaces.items():
            size = int(np.prod(subspace.shape))
            flat = np.frombuffer(shared_memory[key].get_obj(), dtype=subspace.dtype)
            views.append((key, flat[index * size : (index + 1) * size].reshape(subspace.shape)))
        space._views = cached = (shared_memory, index, views)
    for key, view in cached[2]:
        view[...] = values[key]


@concatenate.register(TickObservationSpace)
def _concatenate_tick_observations(
    space: TickObservationSpace, items: Sequence[Mapping[str, np.ndarray]], out: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A sync vector env's batch of its envs' observations: row copies into `out` (no `np.stack` per key)."""
    for key in space.spaces:
        batch = out[key]
        for i, item in enumerate(items):
            batch[i] = item[key]
    return out


class TickSyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's in-process vector env, for `ChunkEnv`s only: build it with ``copy=False`` and
    ``autoreset_mode=DISABLED``.

    A `ChunkEnv` resets itself, never reports termination to the vector env and has an empty info except
    when an episode ended, so a step needs only the envs' steps and one concatenate: the generic step's
    per-env autoreset branches, bookkeeping arrays and info merging cost ~0.5 us per env step, about the
    harness's whole margin over the old eval path at one-action ticks (`python -m benchmarks.rollout --overhead`).
    """

    def step(self, actions: np.ndarray):  # type: ignore[override]
        infos: dict[str, Any] = {}
        rewards = self._rewards
        for i, env in enumerate(self.envs):
            self._env_obs[i], rewards[i], _, _, info = env.step(actions[i])
            if info:  # an episode ended
                infos = self._add_info(infos, info, i)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return self._observations, rewards.copy(), self._terminations.copy(), self._truncations.copy(), infos


class ChunkEnv(gym.Wrapper):
    """A task env whose `step` executes one action chunk: one control tick of the policy.

    Observations are histories {key: (n_obs_steps, *shape)} (the first observation repeated at an
    episode's start). `step(chunk (latency_steps + actions_per_tick, Da))` executes up to
    `actions_per_tick` (A) actions (fewer when the episode ends) and returns the chunk's summed reward.
    The observation's `TICK_KEY` entry packs [executed, offset (the chunk index of the first action
    run), terminated, truncated, rewards (A, 0 after the end), select_ms (A, host time picking each
    action; 0 in continuous mode, where nothing reads it)] (see `unpack_tick`; the wrapper resets
    itself, in continuous mode at once, so the flags it returns to a vector env stay false). Info is empty except when an episode ended: ``episode_*``
    (seed, return, length, success, score and the task's extras) and ``final_<key>`` (the last history).
    """

    def __init__(
        self,
        env: gym.Env,
        n_obs_steps: int,
        actions_per_tick: int,
        latency_steps: int = 0,
        continuous: bool = False,
        seed_stride: int = 1,
    ) -> None:
        super().__init__(env)
        self.n_obs_steps, self.actions_per_tick, self.latency_steps = n_obs_steps, actions_per_tick, latency_steps
        self.continuous, self.seed_stride = continuous, seed_stride
        self.video_path: str | None = None  # set per episode (set_attr) to record it
        self._tick_size = 4 + 2 * actions_per_tick  # see `unpack_tick`
        self._decide_at = actions_per_tick - latency_steps  # the step whose history the next chunk is computed from
        self.history = ObservationHistory(n_obs_steps, batched=False)
        spaces = env.observation_space.spaces  # type: ignore[attr-defined]
        if TICK_KEY in spaces:
            raise ValueError(f"a task's observation key may not be {TICK_KEY!r}: the rollout harness uses it")
        self.observation_space = TickObservationSpace(
            {k: gym.spaces.Box(s.low.min(), s.high.max(), (n_obs_steps, *s.shape), s.dtype) for k, s in spaces.items()}
            | {TICK_KEY: gym.spaces.Box(-np.inf, np.inf, (self._tick_size,), np.float32)}
        )
        act = env.action_space
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (latency_steps + actions_per_tick, *act.shape), np.float32)

    @classmethod
    def for_task(cls, task: TaskConfig, *args: Any, **kwargs: Any) -> ChunkEnv:
        """The task's env wrapped (the other arguments as for the constructor): built inside a worker process,
        which unpickles this module-level reference without importing torch."""
        return cls(make_env(task), *args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def _observe(self, obs: Mapping[str, np.ndarray]) -> None:
        for key, value in obs.items():
            if value.dtype.kind == "f" and not _finite(value):
                raise RolloutError(
                    f"task {self.env.task_spec.name}, seed {self._seed}, step {self._length}: "
                    f"observation '{key}' is not finite"
                )
        self.history.observe(obs)

    def _stacked(self) -> dict[str, np.ndarray]:
        """The history's own buffers: the vector env copies them at once, and an episode's start makes new ones."""
        return self.history.buffers()

    def _start(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._seed, self._length, self._return, self._first, self._idle = seed, 0, 0.0, True, False
        obs, info = self.env.reset(seed=seed)
        self.history.clear()
        self._observe(obs)
        self._frames: list[np.ndarray] | None = [] if self.video_path else None
        return self._stacked(), info

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        histories, info = self._start(seed)
        return {**histories, TICK_KEY: np.zeros(self._tick_size, np.float32)}, info

    def step(self, chunk: np.ndarray):  # type: ignore[override]
        a, env = self.actions_per_tick, self.env
        if self._idle:  # waves: this env's episode is over; it waits for the next wave
            return {**self._last, TICK_KEY: np.zeros(self._tick_size, np.float32)}, 0.0, False, False, {}
        offset = 0 if self._first else self.latency_steps
        timed = not self.continuous  # only evaluation (waves) reads select_ms: its tick latencies
        tick = np.zeros(self._tick_size, np.float32)  # the tick's record, returned as obs[TICK_KEY]
        decision, terminated, truncated, info, total, i = None, False, False, {}, 0.0, 0
        for i in range(a):
            if i == self._decide_at:
                decision = self.history.stacked()  # a copy: the next chunk's history
            if timed:
                start = time.perf_counter()
                action = chunk[offset + i]
                tick[4 + a + i] = (time.perf_counter() - start) * 1000  # select_ms
            else:
                action = chunk[offset + i]
            if self._frames is not None:
                self._frames.append(np.asarray(env.render()))
            obs, reward, terminated, truncated, info = env.step(action)
            if not math.isfinite(reward):
                raise RolloutError(
                    f"task {env.task_spec.name}, seed {self._seed}, step {self._length}: reward is {reward}"
                )
            tick[4 + i] = reward
            total += reward
            self._length += 1
            self._observe(obs)
            if terminated or truncated:
                break
        self._return += total
        self._first = False
        tick[0], tick[1], tick[2], tick[3] = i + 1, offset, terminated, truncated
        out: dict[str, Any] = {}
        if not (terminated or truncated):
            self._last = decision if decision is not None else self._stacked()
        else:
            out.update(self._episode_end(info))
            if self.continuous:
                self._last, _ = self._start(None if self._seed is None else self._seed + self.seed_stride)
            else:
                self._last, self._idle = self._stacked(), True
        # the episode's end travels in info: this env resets itself, so the vector env must never do it
        return {**self._last, TICK_KEY: tick}, float(total), False, False, out

    def _episode_end(self, info: dict[str, Any]) -> dict[str, Any]:
        out = {f"final_{k}": v for k, v in self._stacked().items()}
        out.update(
            episode_seed=-1 if self._seed is None else self._seed,
            episode_return=self._return,
            episode_length=self._length,
            episode_success=bool(info.get("is_success", False)),
            episode_score=float(info.get("score", 0.0)),
        )
        out.update({f"episode_{k}": float(info[k]) for k in EXTRA_INFO_KEYS if k in info and f"episode_{k}" not in out})
        if self._frames:
            path = write_video(Path(self.video_path), self._frames, float(self.env.task_spec.control_hz))
            out["episode_video"] = str(path)
            self._frames = None
        return out


def unpack_tick(tick: np.ndarray, actions_per_tick: int) -> dict[str, np.ndarray]:
    """The per-env fields of `ChunkEnv`'s packed tick records obs[TICK_KEY] (..., 4 + 2A), e.g. (N, ...) for
    one tick or (T, N, ...) for T ticks."""
    a = actions_per_tick
    return {
        "executed": tick[..., 0].astype(np.int64),
        "offset": tick[..., 1].astype(np.int64),
        "terminated": tick[..., 2] != 0,
        "truncated": tick[..., 3] != 0,
        "rewards": tick[..., 4 : 4 + a],
        "select_ms": tick[..., 4 + a :],
    }


def _finite(value: np.ndarray) -> bool:
    """Whether every element is finite; runs once per observation key and env step, so the common case is cheap."""
    # a vector's dot product with itself is non-finite when any element is NaN or inf (one BLAS call); it also
    # overflows on huge finite values, where a float64 sum can too, so a miss is re-checked exactly
    if value.ndim == 1 and math.isfinite(value.dot(value)):  # the method: np.dot's dispatch costs ~0.2 us more
        return True
    return bool(np.isfinite(value).all())
