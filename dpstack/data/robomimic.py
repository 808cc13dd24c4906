"""Import a robomimic HDF5 dataset into an episode store.

robomimic layout: ``data/demo_<i>/actions`` (T, Da), ``data/demo_<i>/obs/<key>`` (T, ...), optionally
``rewards`` and ``dones``; ``data`` carries ``env_args`` (JSON) in its attributes. Demos are imported in
numeric order (demo_2 before demo_10). Actions are stored under the key ``action``, as Diffusion
Policy names them; observation keys keep their robomimic names.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from dpstack.data.store import DEFAULT_CHUNK_BYTES, EpisodeStore
from dpstack.errors import StoreError

_DEMO = re.compile(r"^demo_(\d+)$")


def _demo_names(data: h5py.Group, path: Path) -> list[str]:
    names = [name for name in data if _DEMO.match(name)]
    if not names:
        raise StoreError(f"{path}: group 'data' holds no 'demo_<i>' groups")
    return sorted(names, key=lambda name: int(_DEMO.match(name).group(1)))


def _read(group: h5py.Group, key: str, path: Path) -> np.ndarray:
    if key not in group:
        raise StoreError(f"{path}: missing key '{group.name}/{key}'")
    try:
        return np.asarray(group[key][()])
    except OSError as exc:
        raise StoreError(f"{path}: cannot read '{group.name}/{key}' ({exc})") from exc


def import_robomimic(
    source: str | Path,
    out: str | Path,
    obs_keys: Sequence[str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> EpisodeStore:
    """Copy every demo of `source` into a new episode store at `out` and return it.

    Args:
        source: robomimic ``.hdf5`` file.
        out: new store directory; an existing path is never overwritten.
        obs_keys: observation keys to import (default: all keys of the first demo).
    """
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise StoreError(f"{source}: robomimic file not found")
    if out.exists():
        raise StoreError(f"{out}: already exists; choose a new 'out' path (nothing was written)")
    try:
        h5 = h5py.File(source, "r")
    except OSError as exc:
        raise StoreError(f"{source}: not a readable HDF5 file ({exc})") from exc
    with h5:
        if "data" not in h5:
            raise StoreError(f"{source}: missing group 'data' (expected data/demo_<i>/...)")
        data = h5["data"]
        demos = _demo_names(data, source)
        first = data[demos[0]]
        if "obs" not in first:
            raise StoreError(f"{source}: missing group 'data/{demos[0]}/obs'")
        keys = list(obs_keys) if obs_keys else sorted(first["obs"].keys())
        if "action" in keys:
            raise StoreError(f"{source}: observation key 'action' would clash with the actions key")
        extras = [name for name in ("rewards", "dones") if name in first]
        # Build beside `out` and rename at the end: a failed or killed import never leaves a
        # half-imported store under the name the user asked for.
        staging = out.with_name(out.name + ".importing")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            store = EpisodeStore.create(staging, chunk_bytes=chunk_bytes)
            env_args = _json_or_none(data.attrs.get("env_args"))
            store.set_attrs(source={"format": "robomimic", "file": source.name, "env_args": env_args})
            for name in tqdm(demos, desc=f"import {source.name}", unit="demo", disable=not progress):
                demo = data[name]
                if "obs" not in demo:
                    raise StoreError(f"{source}: missing group 'data/{name}/obs'")
                episode = {"action": _read(demo, "actions", source)}
                episode.update({key: _read(demo["obs"], key, source) for key in keys})
                episode.update({extra[:-1]: _read(demo, extra, source) for extra in extras})
                try:
                    store.append_episode(episode)
                except StoreError as exc:
                    raise StoreError(f"{source}: demo '{name}': {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    staging.rename(out)
    return EpisodeStore.open(out)


def _json_or_none(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        return value
