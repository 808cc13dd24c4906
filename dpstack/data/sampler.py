"""Fixed-length windows over episodes, with edge padding, and the train/validation split by episode.

Timing (Diffusion Policy's convention): a window holds `horizon` consecutive steps. The policy sees the
first `n_obs_steps` observations and is trained to predict all `horizon` actions; at run time it
executes `n_action_steps` of them starting at the last observed step. To train on every step of every
episode, windows may start up to ``n_obs_steps - 1`` steps before an episode (pad_before) and end up to
``n_action_steps - 1`` steps after it (pad_after); positions outside the episode repeat its first or
last frame, which is what the robot sees when it holds still.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpstack.errors import StoreError


@dataclass(frozen=True)
class Window:
    """One window: buffer rows [start, stop) fill window positions [pad_front, horizon - pad_back)."""

    start: int
    stop: int
    pad_front: int
    horizon: int

    def rows(self, limit: int | None = None) -> np.ndarray:
        """Buffer row of each of the first `limit` window positions (edge rows repeated), shape (limit,)."""
        limit = self.horizon if limit is None else min(limit, self.horizon)
        offsets = np.clip(np.arange(limit) - self.pad_front, 0, self.stop - self.start - 1)
        return self.start + offsets


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into (train, val), shuffled by `seed`.

    At least one training episode is kept; validation gets round(n * val_ratio) episodes, and at least
    one whenever val_ratio > 0 and n >= 2.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = round(n_episodes * val_ratio)
    if val_ratio > 0 and n_episodes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n_episodes - 1, 0))
    order = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class SequenceSampler:
    """All windows of `horizon` steps over the chosen episodes of a store.

    Args:
        episode_ends: (N,) cumulative episode ends, as stored in ``meta/episode_ends``.
        horizon: window length in steps.
        pad_before: how far a window may start before its episode (usually n_obs_steps - 1).
        pad_after: how far a window may end after its episode (usually n_action_steps - 1).
        episodes: indices of the episodes to draw windows from (default: all).
    """

    def __init__(
        self,
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episodes: np.ndarray | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0 <= pad_before < horizon or not 0 <= pad_after < horizon:
            raise ValueError(
                f"pad_before and pad_after must be in [0, horizon={horizon}), got {pad_before}, {pad_after}"
            )
        ends = np.asarray(episode_ends, dtype=np.int64)
        chosen = np.arange(ends.size) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= ends.size):
            raise StoreError(f"episode indices {chosen.tolist()} out of range for {ends.size} episodes")
        self.horizon = horizon
        self.pad_before = pad_before
        self.pad_after = pad_after
        self._index = self._build_index(ends, chosen)

    def _build_index(self, ends: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """(M, 3) int64 rows [episode_start, episode_length, window_offset] for every window."""
        starts = np.concatenate([[0], ends[:-1]])
        parts = []
        for episode in chosen:
            start, length = int(starts[episode]), int(ends[episode] - starts[episode])
            offsets = np.arange(-self.pad_before, length - self.horizon + self.pad_after + 1)
            if offsets.size == 0:  # episode too short for any window: one window, padded at the end
                offsets = np.zeros(1, dtype=np.int64)
            parts.append(np.stack([np.full_like(offsets, start), np.full_like(offsets, length), offsets], 1))
        return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def rows(self, indices: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Buffer rows of the first `limit` positions of many windows at once, shape (len(indices), limit).

        The same rows as ``self[i].rows(limit)`` for each i, in one vectorized step (a training batch).
        """
        limit = self.horizon if limit is None else min(limit, self.horizon)
        episode_start, length, offset = self._index[np.asarray(indices, dtype=np.int64)].T
        positions = offset[:, None] + np.arange(limit)
        return episode_start[:, None] + np.clip(positions, 0, length[:, None] - 1)

    def __getitem__(self, i: int) -> Window:
        episode_start, length, offset = (int(v) for v in self._index[i])
        first = max(offset, 0)
        last = min(offset + self.horizon, length)
        return Window(
            start=episode_start + first,
            stop=episode_start + last,
            pad_front=first - offset,
            horizon=self.horizon,
        )
