"""Checkpoints: safetensors weights + JSON metadata, written atomically, loaded without running code.

A checkpoint directory holds
    model.safetensors   the policy's weights (EMA weights when training used EMA), normalizer included
    config.json         format version, dpstack version, policy config, task features, training step
and, for resuming training, ``train_state.safetensors`` (raw weights, optimizer tensors, RNG state)
plus ``train_state.json`` (optimizer hyper-parameters, step, epoch). No pickle anywhere.
Rebuilding a policy from a checkpoint needs the method registry: `dpstack.methods.load_policy`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpstack.errors import UserError
from dpstack.version import __version__

FORMAT_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, truncated, or does not match the code loading it."""


def write_atomic(directory: Path, files: dict[str, Any]) -> None:
    """Write {name: dict of tensors (safetensors) | JSON-able} into `directory`, replacing it atomically."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_file({k: v.detach().contiguous().cpu() for k, v in content.items()}, str(staging / name))
        else:
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def save_policy(
    directory: Path,
    policy: torch.nn.Module,
    extra: dict[str, Any] | None = None,
    train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> None:
    config = {"format_version": FORMAT_VERSION, "dpstack_version": __version__, **policy.config_dict(), **(extra or {})}
    files: dict[str, Any] = {"model.safetensors": policy.state_dict(), "config.json": config}
    if train_state is not None:
        files["train_state.safetensors"], files["train_state.json"] = train_state
    write_atomic(directory, files)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected a dpstack checkpoint file)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from exc


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected a safetensors file)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run directory (its ``checkpoints/latest``)."""
    path = Path(path)
    for candidate in (path / "checkpoints" / "latest", path):
        if (candidate / "config.json").exists():
            return candidate
    raise CheckpointError(f"{path}: not a checkpoint (no config.json here or in checkpoints/latest)")


def optimizer_state(
    optimizer: torch.optim.Optimizer, name: str = "optimizer"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (tensors "<name>.<param>.<key>" for safetensors, JSON for the rest)."""
    state = optimizer.state_dict()
    tensors = {f"{name}.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    groups_key = "param_groups" if name == "optimizer" else f"{name}.param_groups"
    return tensors, {groups_key: state["param_groups"]}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], name: str = "optimizer"
) -> None:
    """Restore the optimizer's moments and step counts; its hyperparameters (lr, betas, weight decay, a
    scheduler's initial_lr) stay as `optimizer` was built, from the resuming run's config: `resume=true
    actor_lr=3e-5` then trains at 3e-5 (torch's load_state_dict alone would bring back the saved ones)."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for full, value in tensors.items():
        if full.startswith(f"{name}."):
            index, key = full[len(name) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups_key = "param_groups" if name == "optimizer" else f"{name}.param_groups"
    optimizer.load_state_dict({"state": state, "param_groups": meta[groups_key]})
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(values)
