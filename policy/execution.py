"""Receding-horizon execution: observation history in, one action per control tick out.

The one place that turns "predict a chunk" into "act every tick", shared by the evaluator and the ROS
node. It keeps the last `n_obs_steps` observations (the first one repeated at the start of an
episode, as Diffusion Policy's env wrapper does) and a queue of predicted actions, and asks the chunk
source for `actions_per_tick` new actions when the queue runs dry. Works on a batch of environments
stepping in lockstep.

Latency-aware execution (`latency_steps` = d > 0): the next chunk is requested while d actions of the
current one are still queued, from the observation of that tick, and only takes effect d ticks later,
as when inference runs beside a robot that keeps executing. Merge rule (time-indexed, newest wins): a
chunk computed at tick tau covers ticks tau, tau + 1, ...; when it arrives its actions for ticks that
have already passed are dropped and it replaces whatever is left of the older chunk. The first chunk of
an episode is waited for (there is nothing to execute before it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np


class ChunkSource(Protocol):
    """history {key: (B, To, ...)} -> actions (B, A, Da) from the current step on; optional reset()."""

    def __call__(self, history: dict[str, np.ndarray]) -> np.ndarray: ...


ChunkFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class RecedingHorizon:
    """select_action(obs {key: (B, ...)}) -> (B, Da); `last_tick_inferred` tells whether it ran the policy."""

    def __init__(
        self, predict_chunk: ChunkSource | ChunkFn, n_obs_steps: int, actions_per_tick: int, latency_steps: int = 0
    ) -> None:
        if not 0 <= latency_steps < actions_per_tick:
            raise ValueError(
                f"latency_steps must be in [0, actions_per_tick={actions_per_tick}) so a chunk arrives before "
                f"the queue runs dry, got {latency_steps}"
            )
        self.predict_chunk = predict_chunk
        self.n_obs_steps = n_obs_steps
        self.actions_per_tick = actions_per_tick
        self.latency_steps = latency_steps
        self.reset()

    def reset(self) -> None:
        """New episode: forget history, queued and pending actions, and the source's state."""
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)
        self._queue: deque[np.ndarray] = deque()
        self._pending: tuple[np.ndarray, int] | None = None  # (chunk, actions of it already in the past)
        self.last_tick_inferred = False
        reset_source = getattr(self.predict_chunk, "reset", None)
        if reset_source is not None:
            reset_source()

    def observe(self, obs: Mapping[str, np.ndarray]) -> None:
        snapshot = {k: np.array(v, copy=True) for k, v in obs.items()}  # never keep the caller's arrays
        if not self._history:
            self._history.extend([snapshot] * self.n_obs_steps)
        else:
            self._history.append(snapshot)

    def stacked_history(self) -> dict[str, np.ndarray]:
        """{key: (B, n_obs_steps, ...)} oldest first."""
        return {k: np.stack([h[k] for h in self._history], axis=1) for k in self._history[-1]}

    def select_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.observe(obs)
        self.last_tick_inferred = False
        if self._pending is None and len(self._queue) <= self.latency_steps:
            chunk = np.asarray(self.predict_chunk(self.stacked_history()))
            skip = len(self._queue)  # ticks that pass (executing the old chunk) before this one arrives
            if chunk.ndim != 3 or chunk.shape[1] < skip + self.actions_per_tick:
                raise ValueError(
                    f"predict_chunk must return (B, A, Da) with A >= {skip + self.actions_per_tick} "
                    f"(latency {skip} + {self.actions_per_tick} actions per tick), got shape {chunk.shape}"
                )
            self._pending = (chunk, skip)
            self.last_tick_inferred = True
        if not self._queue:
            chunk, skip = self._pending  # type: ignore[misc]
            self._queue.extend(chunk[:, i] for i in range(skip, skip + self.actions_per_tick))
            self._pending = None
        return self._queue.popleft()
