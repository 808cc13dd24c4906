"""robomimic HDF5 import, on a small file in robomimic's layout built here."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dpstack.data.robomimic import import_robomimic
from dpstack.errors import StoreError


def _write_robomimic(path: Path, lengths: list[int], broken_demo: str | None = None) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as h5:
        data = h5.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
        # out of numeric order on purpose: demo_10 must come after demo_2
        for i, length in zip([0, 10, 2], lengths, strict=True):
            name = f"demo_{i}"
            demo = {
                "actions": rng.uniform(-1, 1, (length, 7)).astype(np.float32),
                "rewards": (np.arange(length) == length - 1).astype(np.float32),
                "object": rng.normal(size=(length, 10)).astype(np.float64),
                "robot0_eef_pos": rng.normal(size=(length, 3)).astype(np.float64),
                "agentview_image": rng.integers(0, 255, (length, 12, 12, 3), dtype=np.uint8),
            }
            group = data.create_group(name)
            group.create_dataset("actions", data=demo["actions"])
            group.create_dataset("rewards", data=demo["rewards"])
            obs = group.create_group("obs")
            for key in ("object", "robot0_eef_pos", "agentview_image"):
                if not (name == broken_demo and key == "object"):
                    obs.create_dataset(key, data=demo[key])
            demos[name] = demo
    return demos


def test_import_copies_every_demo_in_numeric_order(tmp_path: Path) -> None:
    demos = _write_robomimic(tmp_path / "lift.hdf5", [4, 6, 5])
    store = import_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr", progress=False)
    assert store.n_episodes == 3
    np.testing.assert_array_equal(store.episode_ends, [4, 9, 15])  # demo_0, demo_2, demo_10
    assert sorted(store.keys) == ["action", "agentview_image", "object", "reward", "robot0_eef_pos"]
    for index, name in enumerate(["demo_0", "demo_2", "demo_10"]):
        episode = store.episode(index)
        np.testing.assert_array_equal(episode["action"], demos[name]["actions"])
        np.testing.assert_array_equal(episode["agentview_image"], demos[name]["agentview_image"])
        np.testing.assert_array_equal(episode["reward"], demos[name]["rewards"])
    assert store.info()["attrs"]["source"]["env_args"]["env_name"] == "Lift"


def test_import_selected_obs_keys(tmp_path: Path) -> None:
    _write_robomimic(tmp_path / "lift.hdf5", [4, 6, 5])
    store = import_robomimic(tmp_path / "lift.hdf5", tmp_path / "o.zarr", obs_keys=["object"], progress=False)
    assert sorted(store.keys) == ["action", "object", "reward"]


def test_import_errors_leave_nothing_behind(tmp_path: Path) -> None:
    _write_robomimic(tmp_path / "broken.hdf5", [4, 6, 5], broken_demo="demo_10")
    with pytest.raises(StoreError, match=r"broken\.hdf5: missing key '/data/demo_10/obs/object'"):
        import_robomimic(tmp_path / "broken.hdf5", tmp_path / "out.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.hdf5"]


def test_import_refuses_existing_output_and_bad_files(tmp_path: Path) -> None:
    _write_robomimic(tmp_path / "lift.hdf5", [4, 6, 5])
    (tmp_path / "taken.zarr").mkdir()
    (tmp_path / "taken.zarr" / "keep.txt").write_text("precious")
    with pytest.raises(StoreError, match="already exists"):
        import_robomimic(tmp_path / "lift.hdf5", tmp_path / "taken.zarr", progress=False)
    assert (tmp_path / "taken.zarr" / "keep.txt").read_text() == "precious"
    with pytest.raises(StoreError, match="robomimic file not found"):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "x.zarr")
    (tmp_path / "fake.hdf5").write_text("not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        import_robomimic(tmp_path / "fake.hdf5", tmp_path / "x.zarr")
