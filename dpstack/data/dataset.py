"""Training windows from an episode store, as a torch Dataset.

Keys small enough to fit the RAM budget are loaded once (before DataLoader workers fork, so workers
share them copy-on-write); bigger keys (camera images) stay on disk and are read lazily through a small
per-process cache of decoded chunks, so a store larger than RAM still trains.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from dpstack.data.sampler import SequenceSampler
from dpstack.data.store import EpisodeStore
from dpstack.errors import StoreError

DEFAULT_RAM_BUDGET = 4 << 30


class _LazyKey:
    """Rows of one on-disk key, decoded a chunk at a time and kept in a small LRU cache."""

    def __init__(self, store: EpisodeStore, key: str, cache_chunks: int) -> None:
        self.store = store
        self.key = key
        self.rows_per_chunk = store.chunk_rows(key)
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _chunk(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        start = index * self.rows_per_chunk
        block = self.store.read(self.key, start, min(start + self.rows_per_chunk, self.store.n_steps))
        self._cache[index] = block
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return block

    def take(self, rows: np.ndarray) -> np.ndarray:
        chunk_ids = rows // self.rows_per_chunk
        out = np.empty((rows.size, *self.store.row_shape(self.key)), dtype=self.store.dtype(self.key))
        for chunk_id in np.unique(chunk_ids):
            mask = chunk_ids == chunk_id
            out[mask] = self._chunk(int(chunk_id))[rows[mask] - chunk_id * self.rows_per_chunk]
        return out


class SequenceDataset(Dataset):
    """Windows ``{"obs": {key: (n_obs_steps, ...)}, "action": (horizon, Da)}`` from an episode store.

    Values keep the store's dtype (images stay uint8); the policy's normalizer converts them, so
    workers move 4x fewer bytes than if they sent float images.

    Args:
        path: episode store directory (or .zip).
        obs_keys: observation keys to return (only the first `n_obs_steps` steps of each window).
        action_key: key of the actions (all `horizon` steps).
        horizon, n_obs_steps, n_action_steps: window timing, see `dpstack.data.sampler`.
        episodes: episode indices to use (e.g. the train part of `split_episodes`); default all.
        ram_budget_bytes: keys are loaded into RAM while their total size stays under this.
        cache_chunks: decoded chunks kept per lazily read key and per process.
        padding: let windows overhang episode edges (see `dpstack.data.sampler`); False keeps every
            window inside its episode (a trajectory planner learns whole motions, not held frames).
        returns_discount: when set, each item also holds "return": the discounted return-to-go of
            `reward_key` from the window's first step to the end of its episode (Diffuser's value target).
    """

    def __init__(
        self,
        path: str | Path,
        obs_keys: Sequence[str],
        action_key: str = "action",
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        episodes: np.ndarray | None = None,
        ram_budget_bytes: int = DEFAULT_RAM_BUDGET,
        cache_chunks: int = 16,
        padding: bool = True,
        returns_discount: float | None = None,
        reward_key: str = "reward",
    ) -> None:
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon:
            raise ValueError(
                f"need 1 <= n_obs_steps ({n_obs_steps}) <= horizon ({horizon}) and "
                f"1 <= n_action_steps ({n_action_steps}) <= horizon"
            )
        self.store = EpisodeStore.open(path)
        needed = [*obs_keys, action_key, *([reward_key] if returns_discount is not None else [])]
        missing = [k for k in needed if k not in self.store.keys]
        if missing:
            raise StoreError(f"{self.store.path}: missing key(s) {missing}; the store has {self.store.keys}")
        if self.store.n_episodes == 0:
            raise StoreError(f"{self.store.path}: the store holds no episodes")
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.n_obs_steps = n_obs_steps
        self.sampler = SequenceSampler(
            self.store.episode_ends,
            horizon=horizon,
            pad_before=n_obs_steps - 1 if padding else 0,
            pad_after=n_action_steps - 1 if padding else 0,
            episodes=episodes,
        )
        self.returns = (
            None
            if returns_discount is None
            else discounted_returns(self.store.read(reward_key), self.store.episode_ends, returns_discount)
        )
        self._in_ram: dict[str, np.ndarray] = {}
        self._lazy: dict[str, _LazyKey] = {}
        budget = ram_budget_bytes
        for key in [action_key, *self.obs_keys]:  # actions first: they are read for every step
            size = self.store.n_steps * int(np.prod(self.store.row_shape(key))) * self.store.dtype(key).itemsize
            if size <= budget:
                self._in_ram[key] = self.store.read(key)
                budget -= size
            else:
                self._lazy[key] = _LazyKey(self.store, key, cache_chunks)

    @property
    def lazy_keys(self) -> list[str]:
        """Keys read from disk on demand rather than held in RAM."""
        return list(self._lazy)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        one = self.batch([i])
        item: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            "obs": {key: value[0] for key, value in one["obs"].items()},
            "action": one["action"][0],
        }
        if "return" in one:
            item["return"] = one["return"][0]
        return item

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """The windows `indices`, stacked: what collating ``[self[i] for i in indices]`` gives, in one
        gather per key instead of one per window and key (a training step's data in a few numpy calls)."""
        indices = np.asarray(indices, dtype=np.int64)
        obs_rows = self.sampler.rows(indices, self.n_obs_steps)
        batch: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            "obs": {key: self._take_rows(key, obs_rows) for key in self.obs_keys},
            "action": self._take_rows(self.action_key, self.sampler.rows(indices)),
        }
        if self.returns is not None:
            batch["return"] = torch.as_tensor(self.returns[obs_rows[:, 0]], dtype=torch.float32)
        return batch

    def _take_rows(self, key: str, rows: np.ndarray) -> torch.Tensor:
        flat = rows.reshape(-1)
        values = self._in_ram[key][flat] if key in self._in_ram else self._lazy[key].take(flat)
        return torch.from_numpy(np.ascontiguousarray(values).reshape(*rows.shape, *values.shape[1:]))


class BatchedWindows(Dataset):
    """`dataset` indexed by lists of window indices, each giving a whole batch (`SequenceDataset.batch`).

    Use it with a `torch.utils.data.BatchSampler` as the DataLoader's sampler and ``batch_size=None``:
    workers, if any, then build whole batches, and nothing is collated window by window.
    """

    def __init__(self, dataset: SequenceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        return self.dataset.batch(indices)


def batch_loader(
    dataset: SequenceDataset,
    sampler: Iterable[int],
    batch_size: int,
    num_workers: int = 0,
    drop_last: bool = True,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader of whole batches of `dataset`'s windows, in `sampler`'s order (see BatchedWindows)."""
    return DataLoader(
        BatchedWindows(dataset),
        batch_size=None,
        sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        num_workers=num_workers,
        generator=generator,
    )


def discounted_returns(rewards: np.ndarray, episode_ends: np.ndarray, discount: float) -> np.ndarray:
    """Per step, sum_k discount^k reward[t + k] up to the end of that step's episode (float64)."""
    rewards = np.asarray(rewards, dtype=np.float64).reshape(len(rewards), -1).sum(axis=1)
    returns = np.zeros_like(rewards)
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        running = 0.0
        for t in range(end - 1, start - 1, -1):
            running = rewards[t] + discount * running
            returns[t] = running
        start = end
    return returns
