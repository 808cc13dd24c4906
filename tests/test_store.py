"""Episode store: round trips, Diffusion Policy compatibility, and clear errors on bad stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from dpstack.data.store import EpisodeStore
from dpstack.errors import StoreError
from tests.conftest import make_episode


def test_round_trip_preserves_every_row(small_store: EpisodeStore) -> None:
    reopened = EpisodeStore.open(small_store.path)
    assert reopened.zarr_format == 3
    assert reopened.n_episodes == 3
    assert reopened.n_steps == 15
    np.testing.assert_array_equal(reopened.episode_ends, [5, 8, 15])
    assert sorted(reopened.keys) == ["action", "image", "state"]
    for index, length in enumerate([5, 3, 7]):
        expected = make_episode(index, length, image=True)
        got = reopened.episode(index)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
            assert got[key].dtype == expected[key].dtype


def test_chunked_along_time_only_and_compressed(small_store: EpisodeStore) -> None:
    root = zarr.open_group(str(small_store.path), mode="r")
    image = root["data/image"]
    assert image.chunks[1:] == image.shape[1:]  # chunked along time only
    assert small_store.chunk_rows("image") == 256 // (8 * 8 * 3)  # chunk_bytes=256 in the fixture
    codecs = json.loads((small_store.path / "data" / "image" / "zarr.json").read_text())["codecs"]
    assert any(c["name"] == "blosc" and c["configuration"]["cname"] == "zstd" for c in codecs)


def test_info_summary(small_store: EpisodeStore) -> None:
    info = small_store.info()
    assert info["episodes"] == 3 and info["steps"] == 15
    assert info["keys"]["image"] == {
        "shape": [15, 8, 8, 3],
        "dtype": "uint8",
        "chunk_steps": small_store.chunk_rows("image"),
    }
    assert info["episode_length"] == {"min": 3, "mean": 5.0, "max": 7}


def test_append_rejects_mismatched_episodes_without_writing(small_store: EpisodeStore) -> None:
    store = EpisodeStore.open(small_store.path, mode="a")
    good = make_episode(9, 4, image=True)
    with pytest.raises(StoreError, match="differ from the store's"):
        store.append_episode({k: v for k, v in good.items() if k != "image"})
    with pytest.raises(StoreError, match="per-step shape"):
        store.append_episode({**good, "state": np.zeros((4, 2), np.float32)})
    with pytest.raises(StoreError, match="share one length"):
        store.append_episode({**good, "state": np.zeros((3, 3), np.float32)})
    bad = {**good, "action": good["action"].copy()}
    bad["action"][2, 1] = np.nan
    with pytest.raises(StoreError, match=r"episode key 'action' contains NaN or inf at step 2"):
        store.append_episode(bad)
    reopened = EpisodeStore.open(small_store.path)
    assert reopened.n_steps == 15 and reopened.n_episodes == 3
    assert zarr.open_group(str(small_store.path))["data/action"].shape[0] == 15


def test_read_only_store_refuses_to_append(small_store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match="read only"):
        EpisodeStore.open(small_store.path).append_episode(make_episode(0, 2, image=True))


def test_create_refuses_existing_path(small_store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(small_store.path)
    assert EpisodeStore.open(small_store.path).n_episodes == 3


def _write_diffusion_policy_v2_store(path: Path) -> dict[str, np.ndarray]:
    """The published Push-T replay-buffer layout: zarr format 2, Blosc lz4, chunked along time."""
    rng = np.random.default_rng(0)
    ends = np.array([4, 10, 13], dtype=np.int64)
    data = {
        "action": rng.uniform(0, 512, (13, 2)).astype(np.float32),
        "state": rng.uniform(0, 512, (13, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (13, 9, 2)).astype(np.float32),
        "img": rng.integers(0, 255, (13, 96, 96, 3), dtype=np.uint8),
        "n_contacts": rng.integers(0, 3, (13, 1)).astype(np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    group = root.require_group("data")
    for key, values in data.items():
        arr = group.create_array(
            key, shape=values.shape, dtype=values.dtype, chunks=(5, *values.shape[1:]), compressors=blosc
        )
        arr[:] = values
    meta = root.require_group("meta")
    meta.create_array("episode_ends", shape=(3,), dtype="int64", chunks=(3,), compressors=blosc)[:] = ends
    return data


def test_reads_diffusion_policy_zarr_format_2_store(tmp_path: Path) -> None:
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    data = _write_diffusion_policy_v2_store(path)
    assert (path / ".zgroup").exists()
    store = EpisodeStore.open(path)
    assert store.zarr_format == 2
    np.testing.assert_array_equal(store.episode_ends, [4, 10, 13])
    for key, values in data.items():
        np.testing.assert_array_equal(store.read(key), values)
    np.testing.assert_array_equal(store.episode(1)["keypoint"], data["keypoint"][4:10])
    with pytest.raises(StoreError, match="format 3 stores only"):
        EpisodeStore.open(path, mode="a")


def test_reads_zipped_store(tmp_path: Path) -> None:
    path = tmp_path / "replay.zarr"
    data = _write_diffusion_policy_v2_store(path)
    archive = shutil.make_archive(str(tmp_path / "replay.zarr"), "zip", root_dir=path)
    store = EpisodeStore.open(archive)
    np.testing.assert_array_equal(store.read("state"), data["state"])


# ---------------------------------------------------------------- bad stores: one clear error each
def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"nope\.zarr: episode store not found"):
        EpisodeStore.open(tmp_path / "nope.zarr")


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr store"):
        EpisodeStore.open(tmp_path / "plain")


def test_corrupt_root_metadata(small_store: EpisodeStore) -> None:
    (small_store.path / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(StoreError, match="corrupt zarr metadata"):
        EpisodeStore.open(small_store.path)


def test_corrupt_array_metadata_names_the_key(small_store: EpisodeStore) -> None:
    (small_store.path / "meta" / "episode_ends" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="meta/episode_ends"):
        EpisodeStore.open(small_store.path)


def test_missing_episode_ends(small_store: EpisodeStore) -> None:
    shutil.rmtree(small_store.path / "meta" / "episode_ends")
    with pytest.raises(StoreError, match="missing key 'meta/episode_ends'"):
        EpisodeStore.open(small_store.path)


def test_missing_data_key(small_store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match=r"missing key 'data/velocity'.*'action', 'image', 'state'"):
        small_store.read("velocity")


def test_ragged_episode_ends(small_store: EpisodeStore) -> None:
    zarr.open_group(str(small_store.path), mode="r+")["meta/episode_ends"][1] = 2
    with pytest.raises(StoreError, match=r"ragged 'meta/episode_ends': entry 1 is 2"):
        EpisodeStore.open(small_store.path)


def test_truncated_key_shorter_than_episode_ends(small_store: EpisodeStore) -> None:
    zarr.open_group(str(small_store.path), mode="r+")["data/state"].resize((10, 3))
    with pytest.raises(StoreError, match=r"truncated key 'data/state': 10 steps.*says 15"):
        EpisodeStore.open(small_store.path)


def test_truncated_chunk_file_names_the_key(small_store: EpisodeStore) -> None:
    chunk = next((small_store.path / "data" / "state" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(chunk.read_bytes()[:7])
    store = EpisodeStore.open(small_store.path)  # metadata is fine: opening is cheap and succeeds
    with pytest.raises(StoreError, match=r"cannot read 'data/state'.*corrupt or truncated chunk"):
        store.verify()


def test_nan_in_stored_data_is_found_by_verify(small_store: EpisodeStore) -> None:
    zarr.open_group(str(small_store.path), mode="r+")["data/state"][6, 0] = np.nan
    with pytest.raises(StoreError, match=r"key 'data/state' contains NaN or inf at step 6"):
        EpisodeStore.open(small_store.path).verify()
