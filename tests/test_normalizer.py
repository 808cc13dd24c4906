"""Normalizer: [-1, 1] ranges, constant dimensions, images, and a safetensors round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file

from dpstack.data.store import EpisodeStore
from dpstack.errors import StoreError
from dpstack.policy.normalizer import Normalizer


def test_minmax_maps_data_range_to_unit_interval(small_store: EpisodeStore) -> None:
    normalizer = Normalizer.fit(small_store, {"action": "minmax", "state": "minmax", "image": "image"})
    action = torch.from_numpy(small_store.read("action"))
    normalized = normalizer.normalize("action", action)
    assert torch.allclose(normalized.min(0).values, torch.tensor([-1.0, -1.0]))
    assert torch.allclose(normalized.max(0).values, torch.tensor([1.0, 1.0]))
    assert torch.allclose(normalizer.unnormalize("action", normalized), action, atol=1e-5)


def test_constant_dimension_is_centred_not_blown_up(small_store: EpisodeStore) -> None:
    normalizer = Normalizer.fit(small_store, {"state": "minmax"})
    state = torch.from_numpy(small_store.read("state"))  # column 2 is constant 3.0
    normalized = normalizer.normalize("state", state)
    assert torch.all(normalized[:, 2] == 0.0)
    assert torch.allclose(normalizer.unnormalize("state", normalized), state, atol=1e-5)


def test_standard_mode_gives_z_scores_and_centres_constant_dimensions(small_store: EpisodeStore) -> None:
    normalizer = Normalizer.fit(small_store, {"state": "standard"})
    state = small_store.read("state").astype(np.float64)
    normalized = normalizer.normalize("state", torch.from_numpy(state).float()).double()
    varying = state.std(0) > 1e-4
    np.testing.assert_allclose(normalized.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(0, unbiased=False).numpy()[varying], 1.0, atol=1e-4)
    assert torch.all(normalized[:, 2] == 0.0)  # column 2 is constant 3.0: centred, scale 1
    reloaded = Normalizer()
    reloaded.load_state_dict(normalizer.state_dict())
    assert reloaded.modes == {"state": "standard"}


def test_image_mode_maps_uint8_to_unit_interval(small_store: EpisodeStore) -> None:
    normalizer = Normalizer.fit(small_store, {"image": "image"})
    pixels = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert torch.allclose(normalizer.normalize("image", pixels), torch.tensor([-1.0, 1.0, -0.6]))


def test_saved_statistics_reload_without_the_store(small_store: EpisodeStore, tmp_path: Path) -> None:
    fitted = Normalizer.fit(small_store, {"action": "minmax", "image": "image"})
    save_file(fitted.state_dict(), tmp_path / "normalizer.safetensors")
    restored = Normalizer()
    restored.load_state_dict(load_file(tmp_path / "normalizer.safetensors"))
    assert restored.modes == {"action": "minmax", "image": "image"}
    x = torch.randn(4, 2)
    assert torch.equal(restored.normalize("action", x), fitted.normalize("action", x))
    with pytest.raises(KeyError, match="no statistics for key 'state'"):
        restored.normalize("state", x)


def test_fit_reports_nan_with_key_and_step(small_store: EpisodeStore) -> None:
    zarr.open_group(str(small_store.path), mode="r+")["data/action"][9, 1] = np.inf
    with pytest.raises(StoreError, match=r"key 'data/action' contains NaN or inf at step 9"):
        Normalizer.fit(EpisodeStore.open(small_store.path), {"action": "minmax"})


def test_fit_rejects_unknown_mode_and_key(small_store: EpisodeStore) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        Normalizer.fit(small_store, {"action": "zscore"})
    with pytest.raises(StoreError, match="missing key 'data/velocity'"):
        Normalizer.fit(small_store, {"velocity": "minmax"})
