"""Export a policy and one of its samplers to ONNX: graphs for one control tick, plus policy.json.

Files in the export directory:
  policy.onnx        one steady control tick: raw observation history + sampler state + noise in,
                     raw actions + new sampler state out (normalization, observation encoder, the
                     sampler's denoising steps and its buffer shift are all inside the graph)
  policy_start.onnx  the first tick of an episode (stateful samplers only: streaming, rti): raw
                     observations + noise in, raw actions + the initial sampler state out
  condition.onnx     raw observation history -> the denoiser's conditioning vector
  denoiser.onnx      one denoiser call (sample, timesteps, cond) -> prediction, for users who run
                     their own sampling loop (normalized action space; see policy.json "normalizer")
  policy.json        everything a runtime needs to feed and check these graphs (see `metadata`)

Any policy with `sample_tick(obs, sampler, state, noise)` exports (Diffusion Policy and the Gaussian
policy of PPO); condition.onnx and denoiser.onnx exist for diffusion policies only.

Noise is an input of every tick graph, so a run can be replayed exactly; the batch axis is dynamic.
`policy/runtime.py` runs the export with numpy + onnxruntime only.

`quantize_export` turns an export's tick graphs to int8 weights (ONNX Runtime's dynamic quantization of
MatMul/Gemm weights: 4x smaller weights, activations quantized per call) and keeps them only if they
still agree with PyTorch within a stated bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpstack.errors import ConfigError
from dpstack.policy.diffusion_policy import DiffusionPolicy
from dpstack.policy.onnx_ops import for_onnx
from dpstack.policy.samplers import Sampler, max_calls_per_tick
from dpstack.version import __version__

FORMAT = "dpstack-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18


class TickGraph(nn.Module):
    """forward(*obs (B, To, ...) in `obs_keys` order, *state in `state_names` order, noise) -> (actions, *state)."""

    def __init__(
        self,
        policy: DiffusionPolicy,
        sampler: Sampler,
        obs_keys: Sequence[str],
        state_names: Sequence[str],
        start: bool,
    ) -> None:
        super().__init__()
        self.policy, self.sampler = policy, sampler
        self.obs_keys, self.state_names, self.start = list(obs_keys), list(state_names), start

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_obs, n_state = len(self.obs_keys), 0 if self.start else len(self.state_names)
        obs = dict(zip(self.obs_keys, inputs[:n_obs], strict=True))
        state = None if self.start else dict(zip(self.state_names, inputs[n_obs : n_obs + n_state], strict=True))
        actions, new_state = self.policy.sample_tick(obs, self.sampler, state, inputs[n_obs + n_state])
        return (actions, *(new_state[name] for name in self.state_names)) if new_state else (actions,)


class ConditionGraph(nn.Module):
    def __init__(self, policy: DiffusionPolicy, obs_keys: Sequence[str]) -> None:
        super().__init__()
        self.policy, self.obs_keys = policy, list(obs_keys)

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        return self.policy.condition(dict(zip(self.obs_keys, obs, strict=True)))


def weights_sha256(policy: nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def example_observations(policy: DiffusionPolicy, batch: int = 1) -> dict[str, torch.Tensor]:
    """Zeros of every observation key, (batch, n_obs_steps, *shape), in the key's dtype."""
    return {
        key: torch.zeros((batch, policy.cfg.n_obs_steps, *feature.shape), dtype=getattr(torch, feature.dtype))
        for key, feature in sorted(policy.obs_features.items())
    }


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    batch_axis: dict[str, int],
    opset: int,
) -> None:
    """torch.export-based ONNX export (its optimized graphs load ~20x faster in onnxruntime than the
    TorchScript exporter's for unrolled samplers), with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes: tuple[Any, ...] = tuple(
        {batch_axis[name]: batch} if name in batch_axis else None for name in inputs
    )
    if isinstance(module, TickGraph | ConditionGraph):  # forward(*inputs): one varargs entry
        dynamic_shapes = (dynamic_shapes,)
    # the exporter logs a warning per torchvision operator it skips when torchvision is absent (dpstack does
    # not use it): four lines per graph, noise to a user
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    finally:
        registry_log.setLevel(registry_level)


def _io(names: list[str], tensors: Sequence[torch.Tensor], batch_axis: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": ["batch" if i == batch_axis.get(name) else int(d) for i, d in enumerate(t.shape)],
            "dtype": str(t.dtype).removeprefix("torch."),
        }
        for name, t in zip(names, tensors, strict=True)
    ]


def _export_denoiser(policy: DiffusionPolicy, obs: dict[str, torch.Tensor], out: Path, opset: int) -> dict[str, Any]:
    """condition.onnx and denoiser.onnx of a diffusion policy (for users who run their own sampling loop)."""
    obs_keys = list(obs)
    cond = policy.condition(obs)
    _export(
        ConditionGraph(policy, obs_keys),
        tuple(obs.values()),
        out / "condition.onnx",
        obs_keys,
        ["cond"],
        dict.fromkeys([*obs_keys, "cond"], 0),
        opset,
    )
    sample, timesteps = torch.zeros(2, policy.cfg.horizon, policy.action_dim), torch.zeros(2, dtype=torch.long)
    _export(
        policy.denoiser,
        (sample, timesteps, cond),
        out / "denoiser.onnx",
        ["sample", "timesteps", "cond"],
        ["prediction"],
        {"sample": 0, "timesteps": 0, "cond": 0, "prediction": 0},
        opset,
    )
    return {
        "condition": {
            "file": "condition.onnx",
            "inputs": _io(obs_keys, list(obs.values()), dict.fromkeys(obs_keys, 0)),
        },
        "denoiser": {"file": "denoiser.onnx", "timesteps": "int64 (B,) or (B, horizon); -1 is never passed"},
    }


@torch.no_grad()
def export_policy(
    policy: DiffusionPolicy,
    sampler: Sampler,
    out_dir: str | Path,
    action_low: Sequence[float],
    action_high: Sequence[float],
    control_hz: float,
    task: dict[str, Any] | None = None,
    sampler_config: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    onnx_ops: bool = True,
) -> dict[str, Any]:
    """Write the graphs and policy.json to `out_dir`; returns the metadata.

    `onnx_ops` exports Mish and GroupNorm in their faster ONNX Runtime spellings (`policy/onnx_ops.py`,
    numerically equal); False keeps PyTorch's own, for comparing the two.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy.eval().cpu()
    weights = weights_sha256(policy)
    if onnx_ops:
        policy = for_onnx(policy)
    obs = example_observations(policy, batch=2)  # batch 1 would be specialized by torch.export
    obs_keys = list(obs)
    horizon, action_dim = policy.cfg.horizon, policy.action_dim
    stateful = sampler.stateful
    start_noise = torch.zeros(sampler.noise_shape(2, horizon, action_dim, None))
    start_actions, start_state = policy.sample_tick(obs, sampler, None, start_noise)
    state_names = sorted(start_state) if start_state else []
    graphs: dict[str, Any] = {}

    def tick_graph(file: str, key: str, start: bool) -> None:
        state_in = [] if start else [start_state[n] for n in state_names]
        state = None if start else start_state
        noise = torch.zeros(sampler.noise_shape(2, horizon, action_dim, state))
        inputs = [*obs_keys, *([] if start else state_names), "noise"]
        outputs = ["actions", *(f"next_{n}" for n in state_names)]
        args = (*obs.values(), *state_in, noise)
        graph = TickGraph(policy, sampler, obs_keys, state_names, start)
        results = graph(*args)
        batch_axis = {name: 0 for name in [*inputs, *outputs]} | {"noise": 1}
        _export(
            graph,
            args,
            out / file,
            inputs,
            outputs,
            batch_axis,
            opset,
        )
        graphs[key] = {
            "file": file,
            "inputs": _io(inputs, args, batch_axis),
            "outputs": _io(outputs, results, batch_axis),
            "network_evaluations": sampler.nfe(state),
        }

    tick_graph("policy.onnx", "tick", start=not stateful)  # a stateless sampler's every tick is a first tick
    if stateful:
        tick_graph("policy_start.onnx", "start", start=True)
    if hasattr(policy, "denoiser"):
        graphs.update(_export_denoiser(policy, obs, out, opset))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dpstack_version": __version__,
        "opset": opset,
        "weights_sha256": weights,
        "task": task or {},
        "control_hz": float(control_hz),
        "observations": [
            {"key": k, "shape": list(f.shape), "dtype": f.dtype, "normalize": f.normalize, "message": f.message}
            for k, f in sorted(policy.obs_features.items())
        ],
        "action": {
            "dim": action_dim,
            "low": [float(v) for v in action_low],
            "high": [float(v) for v in action_high],
            "discrete_dims": list(policy.action_feature.discrete_dims),
        },
        "horizon": horizon,
        "n_obs_steps": policy.cfg.n_obs_steps,
        "n_action_steps": policy.cfg.n_action_steps,
        "actions_per_tick": policy.actions_per_tick(sampler),
        "actions_per_output": int(start_actions.shape[1]),
        "sampler": {
            "name": sampler.name,
            "config": sampler_config or {},
            "stateful": stateful,
            "max_calls_per_tick": max_calls_per_tick(sampler),
        },
        "state": [
            {
                "name": n,
                "shape": ["batch", *start_state[n].shape[1:]],
                "dtype": "float32",
                "initial": "output of policy_start.onnx (the first tick of an episode)",
            }
            for n in state_names
        ],
        "graphs": graphs,
        "policy": asdict(policy.cfg),
    }
    if hasattr(policy, "normalizer"):  # the denoiser's action space, for users of denoiser.onnx
        scale, offset = policy.normalizer.params("action")
        unnormalize = "raw = (x - offset) / scale"
        metadata["normalizer"] = {
            "action": {"scale": scale.tolist(), "offset": offset.tolist(), "unnormalize": unnormalize}
        }
    (out / "policy.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


@torch.no_grad()
def parity_check(
    policy: DiffusionPolicy, sampler: Sampler, model_dir: str | Path, ticks: int = 8, batch: int = 2, seed: int = 0
) -> dict[str, float]:
    """Run the export and PyTorch side by side on random observations with the same noise.

    Each side carries its own sampler state across `ticks` ticks. Returns the max abs difference of
    the actions in raw and in normalized units.
    """
    from dpstack.policy.runtime import OnnxPolicy

    runtime = OnnxPolicy(model_dir)
    rng = np.random.default_rng(seed)
    has_normalizer = hasattr(policy, "normalizer")
    scale = (policy.normalizer.params("action")[0] if has_normalizer else policy.normalized_action_scale()).numpy()
    state, worst = None, {"raw": 0.0, "normalized": 0.0}
    for _ in range(ticks):
        history = {}
        for key, feature in policy.obs_features.items():
            shape = (batch, policy.cfg.n_obs_steps, *feature.shape)
            if feature.dtype == "uint8":
                history[key] = rng.integers(0, 256, shape, dtype=np.uint8)
            elif not has_normalizer:  # a policy that normalizes by running statistics: standard draws
                history[key] = rng.standard_normal(shape).astype(np.float32)
            else:  # inside the normalizer's range, where the training data lay
                s, o = (t.numpy() for t in policy.normalizer.params(key))
                history[key] = ((rng.uniform(-1, 1, shape) - o) / s).astype(np.float32)
        noise = rng.standard_normal(runtime.noise_shape(batch, runtime.state is None and runtime.has_start), np.float32)
        exported = runtime.tick(history, noise)
        reference, state = policy.sample_tick(
            {k: torch.as_tensor(v) for k, v in history.items()}, sampler, state, torch.as_tensor(noise)
        )
        diff = np.abs(exported - reference.numpy())
        worst["raw"] = max(worst["raw"], float(diff.max()))
        worst["normalized"] = max(worst["normalized"], float((diff * np.abs(scale)).max()))
    return worst


QUANTIZED_OPS = ("MatMul", "Gemm")  # int8 Conv weights ran slower here (ConvInteger): benchmarks/floor.py
# uint8 weights: ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) saturate their
# 16-bit pair sums (VPMADDUBSW), while u8u8 does not: with "QInt8" the int8 test in tests/test_export.py fails on
# an AVX2-only EPYC (1.88 normalized units off PyTorch). The robot may lack VNNI even when the exporter has it.
QUANTIZED_WEIGHTS = "QUInt8"


def quantize_export(
    policy: DiffusionPolicy, sampler: Sampler, model_dir: str | Path, bound: float, ticks: int = 8
) -> dict[str, float]:
    """Replace the export's tick graphs by int8-weight versions if parity holds (denoiser.onnx stays fp32).

    The quantized graphs are written beside the export and checked against PyTorch (`parity_check`,
    normalized action units); above `bound` they are deleted and a ConfigError names the bound and the
    measured difference, leaving the fp32 export as it was. Returns the parity of the kept graphs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(model_dir)
    staging = out / ".int8"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out, staging, ignore=shutil.ignore_patterns(".*"))
    meta = json.loads((out / "policy.json").read_text())
    files = [meta["graphs"][key]["file"] for key in ("tick", "start") if key in meta["graphs"]]  # what parity checks
    for file in files:
        quantize_dynamic(out / file, staging / file, op_types_to_quantize=list(QUANTIZED_OPS),
                         weight_type=getattr(QuantType, QUANTIZED_WEIGHTS))  # fmt: skip
    worst = parity_check(policy, sampler, staging, ticks=ticks)
    if not worst["normalized"] <= bound:  # NaN refuses too
        shutil.rmtree(staging)
        raise ConfigError(
            f"quantize=int8: the int8 export differs from PyTorch by {worst['normalized']:.2e} (normalized action "
            f"units) over {ticks} ticks, above quantize_bound={bound:g}; refused ({out} keeps the fp32 export). "
            "Raise quantize_bound if that error is acceptable for your robot, or export fp32"
        )
    meta["quantization"] = {
        "weights": "uint8",
        "method": "onnxruntime dynamic quantization (uint8 weights per tensor, uint8 activations per call)",
        "ops": list(QUANTIZED_OPS),
        "graphs": files,
        "parity_bound": bound,
        "parity_normalized": worst["normalized"],
        "parity_raw": worst["raw"],
    }
    for file in files:
        (staging / file).replace(out / file)
    (out / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(staging)
    return worst
