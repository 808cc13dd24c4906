"""Export a trained policy with one sampler to ONNX for a PyTorch-free runtime (policy/runtime.py).

Writes <out>/policy.onnx (one control tick: raw observation history + sampler state + noise in, raw
actions + new state out), <out>/policy_start.onnx (an episode's first tick, for streaming and rti),
condition.onnx + denoiser.onnx (one denoiser call, for custom loops) and <out>/policy.json (keys,
shapes, dtypes, action limits, control rate, timing, sampler, state shapes, opset, weights hash,
dpstack version). Checks the export against PyTorch on random observations before it returns.
`quantize=int8` then swaps the tick graphs for int8-weight ones if they stay within `quantize_bound`
of PyTorch (refused otherwise, naming the bound and the measured difference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dpstack.bounds import OUTPUT_DIRECTORY, bounds

CONFIG_NAME = "export"


@dataclass
class Config:
    checkpoint: str = field(default="???", metadata={"help": "training run dir or checkpoint dir"})
    out: str = field(
        default="???", metadata={"help": "directory for policy.onnx, policy.json, ...", **OUTPUT_DIRECTORY}
    )
    sampler: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "sampler=ddim|streaming|rti|ddpm (default: the policy's); options as sampler.<key>=..."},
    )
    opset: int = field(default=18, metadata={"help": "ONNX opset"})
    check_ticks: int = field(
        default=8, metadata={"help": "ticks compared against PyTorch after export (0: skip)", **bounds(0)}
    )
    max_calls: int = field(
        default=32,
        metadata={"help": "most denoiser calls unrolled into one tick graph (export time and size)", **bounds(1)},
    )
    one_call_per_tick: bool = field(
        default=False, metadata={"help": "refuse a sampler that makes more than one denoiser call in any tick"}
    )
    quantize: str | None = field(
        default=None,
        metadata={"help": "int8: int8 MatMul/Gemm weights in the tick graphs, kept only within quantize_bound"},
    )
    quantize_bound: float = field(
        default=2e-3,
        metadata={
            "help": "largest |int8 - PyTorch| action difference accepted (normalized units, [-1, 1])",
            **bounds(0, open_low=True),
        },
    )


def run(cfg: Config) -> int:
    import torch

    from dpstack.commands import load_policy_and_sampler
    from dpstack.envs.registry import task_spec
    from dpstack.errors import ConfigError
    from dpstack.policy.export import export_policy, parity_check, quantize_export
    from dpstack.policy.samplers import ONE_CALL_LAYOUTS, max_calls_per_tick

    if cfg.quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be int8 or null, got {cfg.quantize!r}")
    if cfg.quantize and cfg.check_ticks < 1:
        raise ConfigError("quantize=int8 keeps the int8 graphs only after a parity check: set check_ticks >= 1")
    policy, task, sampler = load_policy_and_sampler(
        cfg.checkpoint, cfg.sampler, methods=("diffusion_policy", "gaussian")
    )
    calls = max_calls_per_tick(sampler)
    if cfg.one_call_per_tick and calls > 1:
        layouts = "".join(f"\n  - {layout}" for layout in ONE_CALL_LAYOUTS)
        raise ConfigError(
            f"one_call_per_tick: sampler {sampler.name} on this policy (n_action_steps="
            f"{policy.cfg.n_action_steps}) makes up to {calls} denoiser calls in one tick; layouts that make "
            f"one:{layouts}"
        )
    if calls > cfg.max_calls:
        raise ConfigError(
            f"sampler {sampler.name} unrolls {calls} denoiser calls into one tick graph (max_calls={cfg.max_calls}); "
            "export a few-step sampler (e.g. sampler=ddim, or sampler=rti sampler.first=ddim "
            "sampler.num_inference_steps=10) or raise max_calls"
        )
    spec = task_spec(task)
    torch.set_num_threads(1)
    options = asdict(policy.sampler_options(cfg.sampler))
    meta = export_policy(
        policy, sampler, cfg.out, spec.action_low, spec.action_high, spec.control_hz, asdict(task), options, cfg.opset
    )
    print(
        f"exported {task.name} policy with sampler {sampler.name} to {cfg.out} (weights {meta['weights_sha256'][:12]})"
    )
    if cfg.check_ticks:
        worst = parity_check(policy, sampler, cfg.out, ticks=cfg.check_ticks)
        print(
            f"parity over {cfg.check_ticks} ticks vs PyTorch: max abs diff {worst['raw']:.2e} (raw action units), "
            f"{worst['normalized']:.2e} (normalized)"
        )
    if cfg.quantize:
        worst = quantize_export(policy, sampler, cfg.out, cfg.quantize_bound, ticks=cfg.check_ticks)
        print(
            f"int8 weights kept: parity {worst['normalized']:.2e} (normalized) <= quantize_bound {cfg.quantize_bound:g}"
        )
    return 0
