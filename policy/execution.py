"""Receding-horizon execution: observation history in, one action per control tick out.

The one place that turns "predict a chunk" into "act every tick", shared by the evaluator and the ROS
node. It keeps the last `n_obs_steps` observations (the first one repeated at the start of an
episode, as Diffusion Policy's env wrapper does) and a queue of predicted actions, and asks for a new
chunk when the queue is empty. Works on a batch of environments stepping in lockstep.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

ChunkFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # {key: (B, To, ...)} -> (B, Ta, Da)


class RecedingHorizon:
    """select_action(obs {key: (B, ...)}) -> (B, Da); `last_tick_inferred` tells whether it ran the policy."""

    def __init__(self, predict_chunk: ChunkFn, n_obs_steps: int, n_action_steps: int) -> None:
        self.predict_chunk = predict_chunk
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.reset()

    def reset(self) -> None:
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)
        self._queue: deque[np.ndarray] = deque()
        self.last_tick_inferred = False

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
        self.last_tick_inferred = not self._queue
        if not self._queue:
            chunk = np.asarray(self.predict_chunk(self.stacked_history()))
            if chunk.ndim != 3 or chunk.shape[1] < 1:
                raise ValueError(f"predict_chunk must return (B, Ta, Da), got shape {chunk.shape}")
            self._queue.extend(chunk[:, i] for i in range(min(chunk.shape[1], self.n_action_steps)))
        return self._queue.popleft()
