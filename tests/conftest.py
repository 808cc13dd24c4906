"""Shared fixtures: small episode stores built in the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policy.data.store import EpisodeStore


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
