"""Episode store: demonstrations kept as a zarr group, compatible with Diffusion Policy's ReplayBuffer.

Layout (the same as Diffusion Policy's replay buffer, so its published stores open here unchanged)::

    <store>/data/<key>          (T_total, ...)  every episode's steps concatenated along time
    <store>/meta/episode_ends   (N,) int64      cumulative end index of each episode

Stores are written in zarr format 3, chunked along time only and compressed with Blosc/zstd. Format-2
stores (as Diffusion Policy publishes them, directory or ``.zip``) are read as they are.

Crash safety: an episode is appended in three steps, each made of atomic file replacements (zarr's
local store writes a temporary file and renames it): (1) the data rows, (2) the new entry of
``meta/episode_ends``, (3) the commit, ``n_episodes`` in the root attributes. Readers only look at the
first ``n_episodes`` episodes, so a writer killed anywhere leaves a store that opens and holds only whole
episodes; the next writer trims the uncommitted tail before appending.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from dpstack.errors import StoreError
from dpstack.tasks import TaskSpec

FORMAT_VERSION = 1
DEFAULT_CHUNK_BYTES = 1 << 20  # ~1 MiB per chunk: ~37 frames of 96x96x3 images, ~50k rows of 5 floats
_ATTR = "dpstack"


def _rows_per_chunk(row_shape: tuple[int, ...], dtype: np.dtype, chunk_bytes: int) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    return max(1, chunk_bytes // row_bytes)


class EpisodeStore:
    """A zarr episode store. Open with `EpisodeStore.open` or make one with `EpisodeStore.create`.

    Reading is lazy: `read(key, start, stop)` decodes only the chunks it touches, so a store larger
    than RAM can be sampled from. All reads see only committed (whole) episodes.
    """

    def __init__(self, root: zarr.Group, path: Path, writable: bool) -> None:
        self._root = root
        self.path = path
        self.writable = writable
        self._ends = self._load_committed_ends()
        self._arrays = self._load_data_arrays()
        self._check_lengths()
        self._trimmed = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> EpisodeStore:
        """Create an empty store at `path` (zarr format 3). Refuses to touch an existing path."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists; refusing to overwrite an existing path")
        if chunk_bytes <= 0:
            raise StoreError(f"{path}: chunk_bytes must be positive, got {chunk_bytes}")
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        root.require_group("data")
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(4096,), fill_value=0)
        root.attrs[_ATTR] = {"format_version": FORMAT_VERSION, "n_episodes": 0, "chunk_bytes": chunk_bytes}
        return cls(root, path, writable=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EpisodeStore:
        """Open an existing store; `mode` is "r" (read only) or "a" (append episodes).

        Accepts a directory store in zarr format 2 or 3, or (read only) a ``.zip`` store.
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise StoreError(f"{path}: episode store not found")
        if path.is_file() and path.suffix == ".zip":
            if mode != "r":
                raise StoreError(f"{path}: .zip stores are read only; import them into a directory store")
            store: Any = zarr.storage.ZipStore(str(path), mode="r")
        elif path.is_dir():
            if not any((path / name).exists() for name in ("zarr.json", ".zgroup")):
                raise StoreError(f"{path}: not a zarr store (no zarr.json or .zgroup at its root)")
            store = str(path)
        else:
            raise StoreError(f"{path}: not a zarr store (expected a directory or a .zip file)")
        try:
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{path}: corrupt zarr metadata at the store root ({exc})") from exc
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: not a zarr group ({exc})") from exc
        if mode == "a" and root.metadata.zarr_format != 3:
            raise StoreError(
                f"{path}: appending is supported for zarr format 3 stores only (this one is format "
                f"{root.metadata.zarr_format}); import it into a new store first"
            )
        return cls(root, path, writable=mode == "a")

    def _child(self, name: str) -> Any:
        try:
            return self._root[name]
        except KeyError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: corrupt zarr metadata for '{name}' ({exc})") from exc

    def _load_committed_ends(self) -> np.ndarray:
        ends_array = self._child("meta/episode_ends")
        if ends_array is None or not isinstance(ends_array, zarr.Array):
            raise StoreError(f"{self.path}: missing key 'meta/episode_ends' (int64 cumulative episode ends)")
        if ends_array.ndim != 1 or not np.issubdtype(ends_array.dtype, np.integer):
            raise StoreError(
                f"{self.path}: 'meta/episode_ends' must be a 1-d integer array, got shape "
                f"{ends_array.shape} dtype {ends_array.dtype}"
            )
        self._ends_array = ends_array
        n_total = ends_array.shape[0]
        committed = self._root.attrs.get(_ATTR, {}).get("n_episodes", n_total)
        if not 0 <= committed <= n_total:
            raise StoreError(
                f"{self.path}: root attribute {_ATTR}.n_episodes={committed} but 'meta/episode_ends' "
                f"holds {n_total} entries"
            )
        ends = self._read_array(ends_array, "meta/episode_ends", 0, committed).astype(np.int64)
        if ends.size and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = 0 if ends[0] <= 0 else int(np.argmax(np.diff(ends) <= 0)) + 1
            raise StoreError(
                f"{self.path}: ragged 'meta/episode_ends': entry {bad} is {int(ends[bad])}, expected "
                f"strictly increasing positive cumulative ends"
            )
        return ends

    def _load_data_arrays(self) -> dict[str, zarr.Array]:
        data = self._child("data")
        if data is None or not isinstance(data, zarr.Group):
            raise StoreError(f"{self.path}: missing group 'data' (one array per key, concatenated along time)")
        arrays: dict[str, zarr.Array] = {}
        try:
            members = sorted(data.members(), key=lambda kv: kv[0])
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: corrupt zarr metadata under 'data' ({exc})") from exc
        for name, node in members:
            if isinstance(node, zarr.Array):
                arrays[name] = node
        return arrays

    def _check_lengths(self) -> None:
        n_steps = self.n_steps
        for key, array in self._arrays.items():
            if array.ndim == 0 or array.shape[0] < n_steps:
                length = array.shape[0] if array.ndim else 0
                raise StoreError(
                    f"{self.path}: truncated key 'data/{key}': {length} steps, but 'meta/episode_ends' says {n_steps}"
                )

    # ------------------------------------------------------------------ reading
    @property
    def episode_ends(self) -> np.ndarray:
        """(N,) int64 cumulative ends of the committed episodes (a copy)."""
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return int(self._ends.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def keys(self) -> list[str]:
        return list(self._arrays)

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    def row_shape(self, key: str) -> tuple[int, ...]:
        """Shape of one time step of `key`, e.g. (2,) for actions or (96, 96, 3) for images."""
        return tuple(self._array(key).shape[1:])

    def dtype(self, key: str) -> np.dtype:
        return self._array(key).dtype

    def chunk_rows(self, key: str) -> int:
        """Number of time steps per chunk of `key` (reads aligned to this decode whole chunks)."""
        return int(self._array(key).chunks[0])

    def _array(self, key: str) -> zarr.Array:
        try:
            return self._arrays[key]
        except KeyError:
            raise StoreError(f"{self.path}: missing key 'data/{key}'; the store has {sorted(self._arrays)}") from None

    def _read_array(self, array: zarr.Array, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(array[start:stop])
        except Exception as exc:  # zarr/blosc raise many types for a damaged chunk
            raise StoreError(
                f"{self.path}: cannot read '{name}' steps [{start}:{stop}]: corrupt or truncated chunk "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of `key`, limited to committed steps. Shape (stop - start, *row_shape)."""
        stop = self.n_steps if stop is None else stop
        if not 0 <= start <= stop <= self.n_steps:
            raise StoreError(f"{self.path}: rows [{start}:{stop}] of 'data/{key}' outside [0:{self.n_steps}]")
        return self._read_array(self._array(key), f"data/{key}", start, stop)

    def episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of episode `index` as {key: (T, ...)}."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise StoreError(f"{self.path}: episode {index} out of range (store has {self.n_episodes})")
        index %= self.n_episodes
        start = int(self._ends[index - 1]) if index > 0 else 0
        stop = int(self._ends[index])
        return {key: self.read(key, start, stop) for key in (keys or self.keys)}

    def iter_blocks(self, key: str) -> Iterator[np.ndarray]:
        """Committed rows of `key` in chunk-aligned blocks (for streaming statistics over big keys)."""
        step = self.chunk_rows(key)
        for start in range(0, self.n_steps, step):
            yield self.read(key, start, min(start + step, self.n_steps))

    def info(self) -> dict[str, Any]:
        """JSON-ready summary: episodes, steps, episode length range and each key's shape and dtype."""
        lengths = self.episode_lengths
        return {
            "path": str(self.path),
            "zarr_format": self.zarr_format,
            "episodes": self.n_episodes,
            "steps": self.n_steps,
            "episode_length": {
                "min": int(lengths.min()) if lengths.size else 0,
                "mean": float(lengths.mean()) if lengths.size else 0.0,
                "max": int(lengths.max()) if lengths.size else 0,
            },
            "keys": {
                key: {
                    "shape": [self.n_steps, *self.row_shape(key)],
                    "dtype": str(self.dtype(key)),
                    "chunk_steps": self.chunk_rows(key),
                }
                for key in self.keys
            },
            "attrs": {k: v for k, v in self._root.attrs.asdict().items() if k != _ATTR},
        }

    def mismatches(self, spec: TaskSpec) -> list[str]:
        """What keeps this store from serving `spec`'s task: missing keys, wrong per-step shapes or dtypes."""
        expected = {**spec.features, "action": spec.action_feature}
        missing = sorted(set(expected) - set(self.keys))
        problems = [f"missing key(s) {missing} (task {spec.name} needs {sorted(expected)})"] if missing else []
        if self.n_episodes == 0:
            problems.append("no episodes")
        for key, feature in expected.items():
            if key in missing:
                continue
            if self.row_shape(key) != tuple(feature.shape):
                problems.append(
                    f"key '{key}' has per-step shape {self.row_shape(key)}, task {spec.name} expects {feature.shape}"
                )
            elif self.dtype(key) != np.dtype(feature.dtype):
                problems.append(f"key '{key}' has dtype {self.dtype(key)}, task {spec.name} expects {feature.dtype}")
        return problems

    def verify(self) -> None:
        """Decode every committed chunk of every key and check floats are finite (raises StoreError)."""
        for key in self.keys:
            start = 0
            for block in self.iter_blocks(key):
                _check_finite(block, f"{self.path}: key 'data/{key}'", offset=start)
                start += block.shape[0]

    # ------------------------------------------------------------------ writing
    def append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append one whole episode {key: (T, ...)} and commit it; returns the new episode's index.

        Every key must have the same length T >= 1; after the first episode the keys, per-step shapes
        and dtypes are fixed. The episode is validated (shapes, NaN/inf) before anything is written.
        """
        if not self.writable:
            raise StoreError(f"{self.path}: opened read only; open with mode='a' to append")
        arrays = self._validate_episode(episode)
        self._trim_uncommitted()
        length = next(iter(arrays.values())).shape[0]
        start, stop = self.n_steps, self.n_steps + length
        if not self._arrays:
            self._create_arrays(arrays)
        for key, values in arrays.items():
            target = self._arrays[key]
            target.resize((stop, *target.shape[1:]))
            target[start:stop] = values
        n = self.n_episodes
        self._ends_array.resize((n + 1,))
        self._ends_array[n] = stop
        self._set_committed(n + 1)  # the commit point
        self._ends = np.append(self._ends, np.int64(stop))
        return n

    def _validate_episode(self, episode: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not episode:
            raise StoreError(f"{self.path}: an episode needs at least one key")
        arrays = {str(k): np.asarray(v) for k, v in episode.items()}
        lengths = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1 or min(lengths.values()) < 1:
            raise StoreError(f"{self.path}: episode keys must share one length T >= 1, got {lengths}")
        if self._arrays and set(arrays) != set(self._arrays):
            raise StoreError(
                f"{self.path}: episode keys {sorted(arrays)} differ from the store's {sorted(self._arrays)}"
            )
        for key, values in arrays.items():
            if "/" in key or not key:
                raise StoreError(f"{self.path}: invalid key {key!r} (non-empty, no '/')")
            if key in self._arrays:
                expected = self._arrays[key]
                if values.shape[1:] != expected.shape[1:]:
                    raise StoreError(
                        f"{self.path}: key '{key}' has per-step shape {values.shape[1:]}, expected {expected.shape[1:]}"
                    )
                if not np.can_cast(values.dtype, expected.dtype, casting="same_kind"):
                    raise StoreError(f"{self.path}: key '{key}' has dtype {values.dtype}, expected {expected.dtype}")
                arrays[key] = values.astype(expected.dtype, copy=False)
            _check_finite(values, f"{self.path}: episode key '{key}'")
        return arrays

    def _create_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        chunk_bytes = int(self._root.attrs.get(_ATTR, {}).get("chunk_bytes", DEFAULT_CHUNK_BYTES))
        data = self._root["data"]
        for key, values in arrays.items():
            row_shape = tuple(values.shape[1:])
            rows = _rows_per_chunk(row_shape, values.dtype, chunk_bytes)
            # bitshuffle suits slowly varying numeric columns; images compress better byte-shuffled
            shuffle = "shuffle" if values.dtype == np.uint8 else "bitshuffle"
            self._arrays[key] = data.create_array(
                key,
                shape=(0, *row_shape),
                dtype=values.dtype,
                chunks=(rows, *row_shape),
                compressors=[BloscCodec(cname="zstd", clevel=5, shuffle=shuffle)],
                fill_value=0,
                overwrite=True,  # leftovers of an uncommitted first episode
            )

    def _trim_uncommitted(self) -> None:
        """Cut rows and ends that a killed writer left beyond the last commit (once per open)."""
        if self._trimmed:
            return
        if self._ends_array.shape[0] != self.n_episodes:
            self._ends_array.resize((self.n_episodes,))
        for array in self._arrays.values():
            if array.shape[0] != self.n_steps:
                array.resize((self.n_steps, *array.shape[1:]))
        if self.n_episodes == 0:
            self._arrays = {}  # the schema is fixed only by a committed episode
        self._trimmed = True

    def _set_committed(self, n_episodes: int) -> None:
        attrs = dict(self._root.attrs.get(_ATTR, {}))
        attrs.update(format_version=FORMAT_VERSION, n_episodes=n_episodes)
        self._root.attrs[_ATTR] = attrs

    def set_attrs(self, **attrs: Any) -> None:
        """Store JSON metadata (e.g. where the data came from) in the root attributes."""
        if not self.writable:
            raise StoreError(f"{self.path}: opened read only; open with mode='a' to set attributes")
        if _ATTR in attrs:
            raise StoreError(f"{self.path}: attribute '{_ATTR}' is reserved")
        self._root.attrs.update(attrs)

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps})"


def _check_finite(values: np.ndarray, where: str, offset: int = 0) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        return
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise StoreError(
            f"{where} contains NaN or inf at step {int(bad[0]) + offset} (index {tuple(int(i) for i in bad)})"
        )
