"""Receding-horizon execution: observation history in, one action per control tick out.

The one place that turns "predict a chunk" into "act every tick", shared by the evaluator, the
runtime and the ROS node. Two pieces, both numpy only:

- `ObservationHistory` keeps the last `n_obs_steps` observations, the first one repeated at the start
  of an episode (as Diffusion Policy's env wrapper does).
- `ActionSchedule` holds time-indexed actions. Merge rule (newest wins): a chunk computed from the
  observation of tick tau holds, at index i, the action for tick tau + i; inserting it drops whatever
  the older chunk planned from tau on, and actions for ticks that have already passed are never
  executed.

`RecedingHorizon` runs them synchronously (the evaluator): it asks the chunk source for a new chunk
when `latency_steps` = d actions are left, and executes `actions_per_tick` of it. With d > 0 the chunk
is requested from the observation of that tick but only takes effect d ticks later, as when inference
runs beside a robot that keeps executing. The ROS node runs the same two pieces asynchronously, with a
worker thread in place of the inline call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from dpstack.errors import ConfigError


class ChunkSource(Protocol):
    """history {key: (B, To, ...)} -> actions (B, A, Da) from the current step on; optional reset()."""

    def __call__(self, history: dict[str, np.ndarray]) -> np.ndarray: ...


ChunkFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class ObservationHistory:
    """The last `n_obs_steps` observations {key: (B, ...)}; stacked as {key: (B, n_obs_steps, ...)}.

    Kept in one preallocated (B, n_obs_steps, ...) array per key (a control tick copies, never stacks).
    ``batched=False`` keeps one env's history: observations {key: (...)}, histories (n_obs_steps, ...)
    (a rollout worker's per-step path, without a batch axis to add and drop every step).
    """

    def __init__(self, n_obs_steps: int, batched: bool = True) -> None:
        self.n_obs_steps, self.batched = n_obs_steps, batched
        lead = (slice(None),) if batched else ()  # the batch axis, when there is one, comes before the history's
        self._older, self._newer, self._newest = (*lead, slice(None, -1)), (*lead, slice(1, None)), (*lead, -1)
        self.clear()

    def clear(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}  # each key's observation shape: one tuple compare per step
        # (buffer[older], buffer[newer], buffer[newest]) per key, made once per episode: a view costs ~0.1 us
        self._views: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.n_obs_steps if self._buffers else 0

    def observe(self, obs: Mapping[str, np.ndarray]) -> None:
        if not self._buffers:  # an episode's first observation fills the whole history (as Diffusion Policy does)
            axis = 1 if self.batched else 0
            self._buffers = {
                k: np.repeat(np.expand_dims(np.asarray(v), axis), self.n_obs_steps, axis=axis) for k, v in obs.items()
            }
            self._shapes = {k: np.shape(v) for k, v in obs.items()}
            self._views = {k: (b[self._older], b[self._newer], b[self._newest]) for k, b in self._buffers.items()}
            return
        # checked before anything is copied (a bad observation leaves the history as it was); plain loops,
        # as this runs once per env step
        shapes = self._shapes
        if len(obs) != len(shapes):
            self._changed(obs)
        for key, value in obs.items():
            shape = value.shape if type(value) is np.ndarray else np.shape(value)  # np.shape costs ~0.1 us more
            if shape != shapes.get(key):
                self._changed(obs)
        shift = self.n_obs_steps > 1  # a one-step history only overwrites (no empty copy per step)
        views = self._views
        for key, value in obs.items():
            older, newer, newest = views[key]
            if shift:
                older[...] = newer
            newest[...] = value  # copies the caller's values in; never keeps their arrays

    def _changed(self, obs: Mapping[str, np.ndarray]) -> None:
        raise ValueError(
            f"observation keys or shapes changed within an episode: got "
            f"{ {k: np.shape(v) for k, v in obs.items()} }, the history holds {self._shapes} "
            f"(call clear() between episodes)"
        )

    def buffers(self) -> dict[str, np.ndarray]:
        """{key: (B, n_obs_steps, ...)} (unbatched: (n_obs_steps, ...)) without copying: valid until the next
        `observe`."""
        return self._buffers

    def stacked(self) -> dict[str, np.ndarray]:
        """{key: (B, n_obs_steps, ...)} oldest first (copies: later observations do not change them)."""
        return {k: v.copy() for k, v in self._buffers.items()}


class ActionSchedule:
    """Time-indexed actions (B, Da) per control tick; the newest chunk replaces the rest of the older one."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._chunk: np.ndarray | None = None  # (B, A, Da)
        self._start = 0  # the tick of _chunk[:, 0]

    def insert(self, chunk: np.ndarray, start_tick: int) -> None:
        """`chunk[:, i]` is the action for tick `start_tick + i`."""
        self._chunk, self._start = chunk, start_tick

    def remaining(self, tick: int) -> int:
        """Actions planned for `tick` and later."""
        if self._chunk is None:
            return 0
        return max(0, self._start + self._chunk.shape[1] - tick)

    def action_at(self, tick: int) -> np.ndarray | None:
        """The action planned for `tick`, or None when nothing is (ran dry, or not yet computed)."""
        if self._chunk is None or not self._start <= tick < self._start + self._chunk.shape[1]:
            return None
        return self._chunk[:, tick - self._start]


def resolve_latency_steps(latency_steps: int, actions_per_tick: int, predicted: int, what: str) -> int:
    """The latency that fits a chunk source; the one check every caller (evaluator, runtime, ROS node) uses.

    latency_steps: ticks between an observation and its chunk taking effect; -1 picks one tick ahead
        when the chunk is long enough, else 0.
    actions_per_tick: actions executed per tick; predicted: executable actions one chunk holds (from
        the current step). `what` names the source in the error, e.g. "sampler ddim-10".
    """
    if latency_steps < 0:
        latency_steps = 1 if actions_per_tick > 1 and 1 + actions_per_tick <= predicted else 0
    if not 0 <= latency_steps < actions_per_tick or latency_steps + actions_per_tick > predicted:
        raise ConfigError(
            f"latency_steps={latency_steps} does not fit {what}: it executes {actions_per_tick} actions per tick "
            f"out of {predicted} it predicts, so latency_steps must be in "
            f"[0, {min(actions_per_tick - 1, predicted - actions_per_tick)}]"
        )
    return latency_steps


class RecedingHorizon:
    """select_action(obs {key: (B, ...)}) -> (B, Da); `last_tick_inferred` tells whether it ran the policy."""

    def __init__(
        self, predict_chunk: ChunkSource | ChunkFn, n_obs_steps: int, actions_per_tick: int, latency_steps: int = 0
    ) -> None:
        # latency_steps: as checked by `resolve_latency_steps` (a chunk too short for it fails at its tick)
        self.predict_chunk = predict_chunk
        self.n_obs_steps = n_obs_steps
        self.actions_per_tick = actions_per_tick
        self.latency_steps = latency_steps
        self.history = ObservationHistory(n_obs_steps)
        self.schedule = ActionSchedule()
        self.reset()

    def reset(self) -> None:
        """New episode: forget history, planned and pending actions, and the source's state."""
        self.history.clear()
        self.schedule.clear()
        self._tick = 0
        self._pending: tuple[np.ndarray, int] | None = None  # (chunk, tick it was requested at)
        self.last_tick_inferred = False
        reset_source = getattr(self.predict_chunk, "reset", None)
        if reset_source is not None:
            reset_source()

    def select_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.history.observe(obs)
        tick, self._tick = self._tick, self._tick + 1
        self.last_tick_inferred = False
        if self._pending is None and self.schedule.remaining(tick) <= self.latency_steps:
            chunk = np.asarray(self.predict_chunk(self.history.stacked()))
            lag = self.schedule.remaining(tick)  # ticks that pass (executing the old chunk) before it arrives
            if chunk.ndim != 3 or chunk.shape[1] < lag + self.actions_per_tick:
                raise ValueError(
                    f"predict_chunk must return (B, A, Da) with A >= {lag + self.actions_per_tick} "
                    f"(latency {lag} + {self.actions_per_tick} actions per tick), got shape {chunk.shape}"
                )
            self._pending = (chunk[:, : lag + self.actions_per_tick], tick)
            self.last_tick_inferred = True
        if self.schedule.remaining(tick) == 0:  # the pending chunk arrives now
            chunk, requested = self._pending  # type: ignore[misc]
            self.schedule.insert(chunk, requested)
            self._pending = None
        action = self.schedule.action_at(tick)
        assert action is not None
        return action
