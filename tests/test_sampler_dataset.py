"""Windows with edge padding, the episode split, and the torch Dataset (RAM and lazy reads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from dpstack.data.dataset import SequenceDataset, batch_loader, discounted_returns
from dpstack.data.sampler import SequenceSampler, split_episodes
from dpstack.data.store import EpisodeStore
from dpstack.errors import StoreError
from tests.conftest import make_episode


def test_windows_cover_every_step_with_edge_padding() -> None:
    # one episode of 5 steps, horizon 4, pad_before 1, pad_after 2
    sampler = SequenceSampler(np.array([5]), horizon=4, pad_before=1, pad_after=2)
    windows = [sampler[i].rows().tolist() for i in range(len(sampler))]
    assert windows == [
        [0, 0, 1, 2],  # starts one step before the episode: first frame repeated
        [0, 1, 2, 3],
        [1, 2, 3, 4],
        [2, 3, 4, 4],
        [3, 4, 4, 4],  # ends two steps after the episode: last frame repeated
    ]


def test_windows_never_cross_episode_boundaries() -> None:
    ends = np.array([5, 8, 15])
    sampler = SequenceSampler(ends, horizon=6, pad_before=1, pad_after=5)
    starts = np.array([0, 5, 8])
    for i in range(len(sampler)):
        rows = sampler[i].rows()
        episode = np.searchsorted(ends, rows[0], side="right")
        assert starts[episode] <= rows.min() and rows.max() < ends[episode]


def test_episode_shorter_than_window_gets_one_padded_window() -> None:
    sampler = SequenceSampler(np.array([2]), horizon=8)
    assert len(sampler) == 1
    assert sampler[0].rows().tolist() == [0, 1, 1, 1, 1, 1, 1, 1]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    horizon=st.integers(1, 8),
    pads=st.tuples(st.integers(0, 7), st.integers(0, 7)),
    limit=st.one_of(st.none(), st.integers(1, 9)),
)
def test_vectorized_rows_equal_each_windows_rows(
    lengths: list[int], horizon: int, pads: tuple[int, int], limit: int | None
) -> None:
    """`SequenceSampler.rows` (a training batch in one gather) gives exactly each `Window.rows`."""
    pad_before, pad_after = min(pads[0], horizon - 1), min(pads[1], horizon - 1)
    sampler = SequenceSampler(np.cumsum(lengths), horizon, pad_before, pad_after)
    indices = np.arange(len(sampler))[::-1]
    expected = np.stack([sampler[i].rows(limit) for i in indices])
    np.testing.assert_array_equal(sampler.rows(indices, limit), expected)


def test_sampler_restricted_to_episodes() -> None:
    sampler = SequenceSampler(np.array([5, 8, 15]), horizon=2, episodes=np.array([1]))
    assert len(sampler) == 2
    assert {tuple(sampler[i].rows()) for i in range(2)} == {(5, 6), (6, 7)}
    with pytest.raises(StoreError, match="out of range"):
        SequenceSampler(np.array([5]), horizon=2, episodes=np.array([3]))


def test_split_by_episode_is_disjoint_and_seeded() -> None:
    train, val = split_episodes(10, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(10))
    assert np.array_equal(split_episodes(10, 0.2, seed=1)[1], val)
    assert len(split_episodes(3, 0.01)[1]) == 1  # a requested validation split is never empty
    assert len(split_episodes(1, 0.5)[0]) == 1  # ... nor is the training split


@pytest.mark.parametrize("ram_budget", [1 << 30, 0])
def test_dataset_windows_match_store(small_store: EpisodeStore, ram_budget: int) -> None:
    dataset = SequenceDataset(
        small_store.path,
        obs_keys=["state", "image"],
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        ram_budget_bytes=ram_budget,
        cache_chunks=2,
    )
    assert dataset.lazy_keys == ([] if ram_budget else ["action", "state", "image"])
    action = small_store.read("action")
    state = small_store.read("state")
    image = small_store.read("image")
    for i in range(len(dataset)):
        item = dataset[i]
        rows = dataset.sampler[i].rows()
        assert item["action"].shape == (4, 2)
        assert item["obs"]["state"].shape == (2, 3)
        assert item["obs"]["image"].shape == (2, 8, 8, 3) and item["obs"]["image"].dtype == torch.uint8
        np.testing.assert_array_equal(item["action"].numpy(), action[rows])
        np.testing.assert_array_equal(item["obs"]["state"].numpy(), state[rows[:2]])
        np.testing.assert_array_equal(item["obs"]["image"].numpy(), image[rows[:2]])


def test_dataset_in_worker_processes(small_store: EpisodeStore) -> None:
    dataset = SequenceDataset(
        small_store.path, obs_keys=["state", "image"], horizon=4, n_action_steps=2, ram_budget_bytes=0
    )
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(b["action"].shape[0] for b in batches) == len(dataset)
    np.testing.assert_array_equal(batches[0]["obs"]["image"][1].numpy(), dataset[1]["obs"]["image"].numpy())


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_loader_equals_collated_windows(small_store: EpisodeStore, workers: int) -> None:
    """The trainer's loader (whole batches per gather) yields what collating the windows one by one does."""
    dataset = SequenceDataset(small_store.path, obs_keys=["state", "image"], horizon=4, n_action_steps=2)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3)).tolist()
    batched = list(batch_loader(dataset, order, 5, num_workers=workers))
    collated = list(DataLoader(dataset, batch_size=5, sampler=order, drop_last=True))
    assert len(batched) == len(collated) == len(dataset) // 5
    for mine, reference in zip(batched, collated, strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)


def test_dataset_rejects_missing_keys_and_bad_timing(small_store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match=r"missing key\(s\) \['velocity'\]"):
        SequenceDataset(small_store.path, obs_keys=["velocity"])
    with pytest.raises(ValueError, match="n_obs_steps"):
        SequenceDataset(small_store.path, obs_keys=["state"], horizon=4, n_obs_steps=5)


def test_discounted_returns_restart_at_every_episode() -> None:
    rewards = np.array([1.0, 2.0, 4.0, 1.0, 1.0])
    returns = discounted_returns(rewards, np.array([3, 5]), discount=0.5)
    np.testing.assert_allclose(returns, [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4, 1.5, 1])


def test_unpadded_windows_with_returns(tmp_path) -> None:
    """A planner's windows (padding off) stay inside their episode and carry the return-to-go of their first step."""
    store = EpisodeStore.create(tmp_path / "r.zarr")
    for index, length in enumerate([6, 4]):
        episode = make_episode(index, length)
        episode["reward"] = np.arange(length, dtype=np.float32) + 10 * index
        store.append_episode(episode)
    dataset = SequenceDataset(
        store.path, obs_keys=["state"], horizon=3, n_obs_steps=3, n_action_steps=1, padding=False, returns_discount=0.9
    )
    assert len(dataset) == (6 - 3 + 1) + (4 - 3 + 1)
    expected = discounted_returns(store.read("reward"), store.episode_ends, 0.9)
    for i in range(len(dataset)):
        window = dataset.sampler[i]
        assert window.pad_front == 0 and window.stop - window.start == 3
        assert dataset[i]["return"].item() == pytest.approx(expected[window.start], rel=1e-6)
    no_reward = EpisodeStore.create(tmp_path / "n.zarr")
    no_reward.append_episode(make_episode(0, 4))
    with pytest.raises(StoreError, match=r"missing key\(s\) \['reward'\]"):
        SequenceDataset(no_reward.path, obs_keys=["state"], horizon=3, n_action_steps=1, returns_discount=0.9)
