"""The latency floor of one denoiser call on this machine: FLOPs and weight bytes against measured rates.

    floor = max(FLOPs / matmul rate, weight bytes / memory read rate)

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, 2 per
multiply-add) on one call at batch 1; the rates are measured here, with the thread count the runtime
uses: a large fp32 matmul (GFLOP/s) and a sum over a buffer (GB/s), once far larger than the caches
(DRAM) and once the size of the weights (what a batch-1 control loop re-reads every call, and what
stays in a large L3 between calls). Both floors are reported; latencies are quoted as multiples of
the DRAM one, the conservative bound.

Run as a benchmark, it exports one checkpoint's one-call tick (per-action streaming: one denoiser call,
the buffer shift and the normalization) and times it through ONNX Runtime under several session
settings, alternating them in blocks of `--block` calls on the same inputs (batch 1): the export's Mish, GroupNorm and Conv1d
spellings (`policy/onnx_ops.py`) against PyTorch's own, graph optimization levels, IO binding, 1 or 2
intra-op threads, int8 weights of the MatMuls (dynamic quantization) and of every Conv and MatMul.
Each variant's parity against the fp32 graph is measured in normalized action units.

    python -m benchmarks.floor --checkpoint runs/pusht-unet-stream1 --calls 500

Writes benchmarks/results/floor.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"


def _median_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of `size` x `size` matrices with `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        seconds = _median_seconds(lambda: torch.mm(a, b), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def read_gbps(n_bytes: int, threads: int, repeats: int = 20) -> float:
    """Measured read rate (GB/s) over a float32 buffer of `n_bytes`: the faster of a sum and a dot product
    (the higher rate gives the lower, stricter floor)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buffer = torch.ones(max(n_bytes // 4, 1))
        seconds = min(
            _median_seconds(lambda: buffer.sum(), repeats), _median_seconds(lambda: buffer.dot(buffer), repeats)
        )
    finally:
        torch.set_num_threads(previous)
    return buffer.numel() * 4 / seconds / 1e9


def denoiser_cost(denoiser: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> dict:
    """FLOPs of one call and the bytes of the denoiser's parameters and buffers."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        denoiser(sample, timesteps, cond)
    weights = sum(t.numel() * t.element_size() for t in [*denoiser.parameters(), *denoiser.buffers()])
    return {"gflop": counter.get_total_flops() / 1e9, "weight_mb": weights / 1e6}


def network_floor(cost: dict[str, float], threads: int) -> dict[str, float]:
    """Rates of this machine and the floor (ms) of one call of a network with `cost` (see `denoiser_cost`)."""
    gflops = matmul_gflops(threads)
    dram = read_gbps(512 * 2**20, threads)
    cached = read_gbps(int(cost["weight_mb"] * 1e6), threads)
    compute_ms = cost["gflop"] / gflops * 1e3
    floor_dram = max(compute_ms, cost["weight_mb"] / 1e3 / dram * 1e3)
    floor_cached = max(compute_ms, cost["weight_mb"] / 1e3 / cached * 1e3)
    return {
        **cost,
        "threads": threads,
        "matmul_gflops": gflops,
        "dram_read_gbps": dram,
        "weights_sized_read_gbps": cached,
        "compute_floor_ms": compute_ms,
        "floor_ms": floor_dram,
        "floor_cached_ms": floor_cached,
    }


# ---------------------------------------------------------------------------------------------- the benchmark
def _session(path: Path, threads: int = 1, level: str = "ORT_ENABLE_ALL") -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _variants(
    model: Path, feeds: dict[str, np.ndarray], work: Path, torch_spelling: Path
) -> dict[str, tuple[Callable[[], Any], Any]]:
    """name -> (one call, its session) for every runtime setting compared."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from dpstack.policy.export import QUANTIZED_WEIGHTS

    sessions = {
        "fp32, optimization all (the runtime's)": _session(model),
        "fp32, PyTorch's Mish, GroupNorm and Conv1d (onnx_ops=False)": _session(torch_spelling),
        "fp32, optimization basic": _session(model, level="ORT_ENABLE_BASIC"),
        "fp32, optimization disabled": _session(model, level="ORT_DISABLE_ALL"),
        "fp32, 2 threads": _session(model, threads=2),
    }
    # quantization needs every weight as an initializer: the export's Conv weights are Unsqueeze(initializer)
    # (`policy/onnx_ops.py`), which ONNX Runtime's basic optimization folds into constants
    folded = work / "folded.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for name, ops in (("int8 MatMul weights", ["MatMul", "Gemm"]), ("int8 Conv + MatMul weights", ["Conv", "MatMul"])):
        path = work / f"{name.split()[0]}-{len(ops)}.onnx"
        quantize_dynamic(folded, path, op_types_to_quantize=ops, weight_type=getattr(QuantType, QUANTIZED_WEIGHTS))
        sessions[name] = _session(path)
    calls = {name: (lambda s=s: s.run(None, feeds), s) for name, s in sessions.items()}
    runtime = sessions["fp32, optimization all (the runtime's)"]
    binding = runtime.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for output in runtime.get_outputs():
        binding.bind_output(output.name, "cpu")
    calls["fp32, IO binding"] = (lambda: runtime.run_with_iobinding(binding), None)
    return calls


def main() -> None:
    import onnx

    from benchmarks.report import write_results
    from dpstack.envs.registry import task_spec
    from dpstack.methods import load_policy
    from dpstack.policy.export import DEFAULT_OPSET, export_policy
    from dpstack.policy.samplers import StreamingOptions
    from dpstack.tasks import TaskConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a per-action streaming run (one call per tick)")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per variant")
    parser.add_argument("--block", type=int, default=25, help="consecutive calls of one variant before the next")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-floor"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint).eval()
    task = TaskConfig(**policy.checkpoint_config["task"])
    sampler = policy.make_sampler(StreamingOptions(start_steps=1))
    if sampler.nfe({}) != 1:
        raise SystemExit(f"{args.checkpoint}: sampler {sampler.name} makes {sampler.nfe({})} calls per tick, not 1")
    spec = task_spec(task)
    export_policy(policy, sampler, args.out, spec.action_low, spec.action_high, spec.control_hz, vars(task))
    # PyTorch's own spellings: Mish (ONNX Runtime expands it to Softplus, Tanh, Mul), GroupNorm with runtime
    # shape arithmetic (at opset 21 a GroupNormalization node, slower still in ONNX Runtime: README), Conv1d
    torch_spelling = args.out / "torch-spelling"
    export_policy(policy, sampler, torch_spelling, spec.action_low, spec.action_high, spec.control_hz,
                  vars(task), onnx_ops=False)  # fmt: skip
    meta = json.loads((args.out / "policy.json").read_text())
    rng = np.random.default_rng(0)
    feeds = {}
    for spec_in in meta["graphs"]["tick"]["inputs"]:
        shape = [1 if d == "batch" else d for d in spec_in["shape"]]
        feeds[spec_in["name"]] = rng.standard_normal(shape).astype(spec_in["dtype"])
    for key in policy.obs_features:  # observations inside the normalizer's range
        scale, offset = (t.numpy() for t in policy.normalizer.params(key))
        feeds[key] = ((rng.uniform(-1, 1, feeds[key].shape) - offset) / scale).astype(np.float32)
    feeds["buffer"] = rng.uniform(-1, 1, feeds["buffer"].shape).astype(np.float32)
    calls = _variants(args.out / "policy.onnx", feeds, args.out, torch_spelling / "policy.onnx")
    reference = calls["fp32, optimization all (the runtime's)"][0]()[0]
    action_scale = np.abs(policy.normalizer.params("action")[0].numpy())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn, _ in calls.values():
        for _ in range(20):
            fn()
    # alternate in blocks of `--block` calls: drift hits every variant alike, and within a block each one runs
    # as a control loop runs it, the same session call after call (call by call, 8 sessions' weights evict
    # each other from the caches and every variant reads slower)
    for _ in range(max(1, args.calls // args.block)):
        for name, (fn, _) in calls.items():
            for _ in range(args.block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
    sample = torch.zeros(1, policy.cfg.horizon, policy.action_dim)
    cost = denoiser_cost(
        policy.denoiser,
        sample,
        torch.zeros(1, policy.cfg.horizon, dtype=torch.long),
        torch.zeros(1, policy.obs_encoder.output_dim),
    )
    floors = {threads: network_floor(cost, threads) for threads in (1, 2)}
    rows = []
    for name, (fn, session) in calls.items():
        threads = 2 if "2 threads" in name else 1
        floor = floors[threads]
        values = np.asarray(times[name])
        parity = float((np.abs(fn()[0] - reference) * action_scale).max()) if session is not None else 0.0
        rows.append(
            {
                "variant": name,
                "threads": threads,
                "call_ms_p50": float(np.percentile(values, 50)),
                "call_ms_p99": float(np.percentile(values, 99)),
                "call_ms_max": float(values.max()),
                "over_floor_p50": float(np.percentile(values, 50)) / floor["floor_ms"],
                "over_cached_floor_p50": float(np.percentile(values, 50)) / floor["floor_cached_ms"],
                "parity_normalized": parity,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    columns = [
        ("ONNX Runtime setting", "variant"),
        ("threads", "threads"),
        ("call p50 ms", "call_ms_p50"),
        ("call p99 ms", "call_ms_p99"),
        ("call max ms", "call_ms_max"),
        ("p50 / floor (DRAM)", "over_floor_p50"),
        ("p50 / floor (weights cached)", "over_cached_floor_p50"),
        ("max diff vs fp32 (normalized)", "parity_normalized"),
    ]
    write_results(
        RESULTS,
        "floor",
        rows,
        columns,
        {
            "checkpoint": args.checkpoint,
            "opset": DEFAULT_OPSET,
            "graph_nodes": {
                name: len(onnx.load(str(path)).graph.node)
                for name, path in (
                    ("onnx_ops", args.out / "policy.onnx"),
                    ("torch spelling", torch_spelling / "policy.onnx"),
                )
            },
            "sampler": sampler.name,
            "calls": args.calls,
            "batch": 1,
            "floor_1_thread": floors[1],
            "floor_2_threads": floors[2],
            "command": f"python -m benchmarks.floor --checkpoint {args.checkpoint} --calls {args.calls} --block {args.block}",
        },
    )


if __name__ == "__main__":
    main()
