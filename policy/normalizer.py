"""Per-key affine normalization, fitted once on the training store and saved inside the model.

Each key maps to ``x * scale + offset``:
  * ``minmax``: per dimension, [min, max] -> [-1, 1]; a dimension whose range is below `eps` is only
    centred (scale 1), so a constant input does not blow up to huge values.
  * ``image``: uint8 [0, 255] (or float [0, 1]) -> [-1, 1], the same for every dataset.
  * ``standard``: per dimension, (x - mean) / std (z-score; a dimension whose std is below `eps` is
    only centred). For features with heavy tails (joint velocities of a noisy locomotion policy), where
    min-max squeezes the typical values into a sliver of [-1, 1] around a few extreme ones.
  * ``identity``: passed through.

The statistics are torch buffers: they travel in the policy's state dict (safetensors), move with
`.to(device)`, and export into ONNX graphs. They are never recomputed at inference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from dpstack.data.store import EpisodeStore
from dpstack.errors import StoreError

MODES = ("minmax", "standard", "image", "identity")
_KEY = re.compile(r"^[A-Za-z0-9_]+$")


class Normalizer(nn.Module):
    """Holds (scale, offset) per key; `normalize` / `unnormalize` broadcast over leading dims.

    Build with `Normalizer.fit(store, {"action": "minmax", "image": "image"})`, or empty and then
    `load_state_dict` (the modes are recovered from the buffer names).
    """

    def __init__(self, params: Mapping[str, tuple[str, torch.Tensor, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.modes: dict[str, str] = {}
        for key, (mode, scale, offset) in (params or {}).items():
            self.add_key(key, mode, scale, offset)

    def add_key(self, key: str, mode: str, scale: torch.Tensor, offset: torch.Tensor) -> None:
        if not _KEY.match(key):
            raise ValueError(f"normalizer key {key!r} must match [A-Za-z0-9_]+")
        if mode not in MODES:
            raise ValueError(f"normalizer mode for {key!r} must be one of {MODES}, got {mode!r}")
        self.modes[key] = mode
        self.register_buffer(f"{key}__{mode}__scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.register_buffer(f"{key}__{mode}__offset", torch.as_tensor(offset, dtype=torch.float32).clone())

    def params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) of `key`: normalized = raw * scale + offset."""
        if key not in self.modes:
            raise KeyError(f"normalizer has no statistics for key {key!r}; it has {sorted(self.modes)}")
        mode = self.modes[key]
        return getattr(self, f"{key}__{mode}__scale"), getattr(self, f"{key}__{mode}__offset")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Raw values (..., *row_shape) -> normalized float values of the same shape."""
        scale, offset = self.params(key)
        return x.to(scale.dtype) * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize` (returns float)."""
        scale, offset = self.params(key)
        return (x - offset) / scale

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # An empty normalizer learns its keys and modes from the checkpoint's buffer names.
        for name in state_dict:
            if name.startswith(prefix) and name.endswith("__scale"):
                key, mode, _ = name[len(prefix) :].split("__")
                if key not in self.modes:
                    self.add_key(key, mode, state_dict[name], state_dict[f"{prefix}{key}__{mode}__offset"])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    @classmethod
    def fit(cls, store: EpisodeStore, modes: Mapping[str, str], eps: float = 1e-4) -> Normalizer:
        """Fit per-dimension statistics for each key of `store` (streamed chunk by chunk)."""
        params = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalizer mode for {key!r} must be one of {MODES}, got {mode!r}")
            if key not in store.keys:
                raise StoreError(f"{store.path}: missing key 'data/{key}' needed by the normalizer")
            shape = store.row_shape(key)
            if mode == "identity":
                params[key] = (mode, torch.ones(shape), torch.zeros(shape))
            elif mode == "image":
                scale = 2.0 / 255.0 if store.dtype(key) == np.uint8 else 2.0
                params[key] = (mode, torch.full((), scale), torch.full((), -1.0))
            elif mode == "standard":
                params[key] = (mode, *_standard_params(store, key, eps))
            else:
                params[key] = (mode, *_minmax_params(store, key, eps))
        return cls(params)


def _finite_blocks(store: EpisodeStore, key: str) -> Iterator[np.ndarray]:
    """The key's rows block by block as float64, refusing an empty store and naming the first NaN / inf step."""
    if store.n_steps == 0:
        raise StoreError(f"{store.path}: cannot fit a normalizer for 'data/{key}' on an empty store")
    offset_rows = 0
    for block in store.iter_blocks(key):
        block = block.astype(np.float64)
        if not np.isfinite(block).all():
            step = offset_rows + int(np.argwhere(~np.isfinite(block))[0][0])
            raise StoreError(f"{store.path}: key 'data/{key}' contains NaN or inf at step {step}")
        offset_rows += block.shape[0]
        yield block


def _standard_params(store: EpisodeStore, key: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    count, total, squares = 0, np.zeros(store.row_shape(key)), np.zeros(store.row_shape(key))
    for block in _finite_blocks(store, key):
        count += block.shape[0]
        total += block.sum(axis=0)
        squares += (block**2).sum(axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    scale = 1.0 / np.where(std < eps, 1.0, std)
    return torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(-mean * scale, dtype=torch.float32)


def _minmax_params(store: EpisodeStore, key: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    low = np.full(store.row_shape(key), np.inf)
    high = np.full(store.row_shape(key), -np.inf)
    for block in _finite_blocks(store, key):
        low = np.minimum(low, block.min(axis=0))
        high = np.maximum(high, block.max(axis=0))
    span = high - low
    flat = span < eps
    scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
    offset = np.where(flat, -(high + low) / 2.0, -1.0 - low * scale)
    return torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(offset, dtype=torch.float32)
