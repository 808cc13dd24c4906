"""ONNX export vs PyTorch eager: parity, sampler-tick latency side by side, and closed-loop success.

For each sampler: export the checkpoint (`dpstack export`'s code path), then on the same random
observation histories and the same noise run the exported tick through onnxruntime and the PyTorch
sampler alternately, batch 1, one thread each: max abs action difference over an episode of ticks,
and p50/p99 of the time of one sampler tick (one inference; ticks that only pop a queued action cost
microseconds and are left out). Optionally evaluates the exported policy in closed loop on the
task's seeds, to compare with `benchmarks/samplers` (PyTorch, same seeds).

    python -m benchmarks.export --standard runs/pusht-unet-step10000 --streaming runs/pusht-unet-streaming \
        --ticks 300 --episodes 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from benchmarks.report import machine, merge_with_previous, write_results
from benchmarks.samplers import CONSISTENCY_LEVELS
from dpstack.envs.registry import task_spec
from dpstack.methods import load_policy
from dpstack.policy.evaluate import EvalSpec, evaluate_exported
from dpstack.policy.export import export_policy, parity_check
from dpstack.policy.runtime import OnnxPolicy
from dpstack.policy.samplers import ConsistencyOptions, DDIMOptions, RTIOptions, StreamingOptions, max_calls_per_tick
from dpstack.tasks import TaskConfig

RESULTS = Path(__file__).parent / "results"
LINEUP = {
    "ddim-10": ("standard", DDIMOptions(num_inference_steps=10)),
    "ddim-4": ("standard", DDIMOptions(num_inference_steps=4)),
    "rti [2,1,0]": ("standard", RTIOptions(first="ddim", num_inference_steps=10)),
    "streaming-15": ("streaming", StreamingOptions()),
    "per-action streaming-15, one-call start": ("per_action", StreamingOptions(start_steps=1)),
    **{f"consistency-{k}": ("distilled", ConsistencyOptions(timesteps=v)) for k, v in CONSISTENCY_LEVELS.items()},
}


def _histories(policy: Any, n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(n):
        history = {}
        for key, feature in policy.obs_features.items():
            scale, offset = (t.numpy() for t in policy.normalizer.params(key))
            shape = (1, policy.cfg.n_obs_steps, *feature.shape)
            history[key] = ((rng.uniform(-1, 1, shape) - offset) / scale).astype(np.float32)
        out.append(history)
    return out


def time_ticks(policy: Any, sampler: Any, runtime: OnnxPolicy, ticks: int, seed: int = 0) -> dict[str, float]:
    """Alternate ONNX and PyTorch steady ticks on the same inputs; returns p50/p99 ms of each."""
    rng = np.random.default_rng(seed)
    histories = _histories(policy, ticks + 1, rng)
    torch_state = None
    runtime.reset()
    times: dict[str, list[float]] = {"onnx": [], "torch": []}
    for i, history in enumerate(histories):
        start = runtime.state is None and runtime.has_start
        noise = rng.standard_normal(runtime.noise_shape(1, start), np.float32)
        obs = {k: torch.as_tensor(v) for k, v in history.items()}
        t0 = time.perf_counter()
        runtime.tick(history, noise)
        t1 = time.perf_counter()
        _, torch_state = policy.sample_tick(obs, sampler, torch_state, torch.as_tensor(noise))
        t2 = time.perf_counter()
        if i > 0 or not sampler.stateful:  # the first tick of a stateful sampler is a different graph
            times["onnx"].append((t1 - t0) * 1000)
            times["torch"].append((t2 - t1) * 1000)
    return {
        f"{backend}_ms_{q}": float(np.percentile(v, p))
        for backend, v in times.items()
        for q, p in (("p50", 50), ("p99", 99))
    }


def time_control_ticks(runtime: OnnxPolicy, policy: Any, ticks: int, seed: int = 0) -> dict[str, float]:
    """Every control tick of an episode as a controller sees it (`runtime.act`: pops and inferences alike)."""
    rng = np.random.default_rng(seed)
    runtime.reset(seed=seed)
    times = []
    for history in _histories(policy, ticks, rng):
        obs = {k: v[0, -1] for k, v in history.items()}
        t0 = time.perf_counter()
        runtime.act(obs)
        times.append((time.perf_counter() - t0) * 1000)
    steady = np.asarray(times[1:])
    return {
        "control_ms_p50": float(np.percentile(steady, 50)),
        "control_ms_p99": float(np.percentile(steady, 99)),
        "control_ms_max": float(steady.max()),
        "first_tick_ms": times[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standard", required=True)
    parser.add_argument("--streaming")
    parser.add_argument("--per-action", help="a policy=unet-streaming-per-action run of the same recipe")
    parser.add_argument("--distilled", help="a consistency student of --standard (dpstack distill)")
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=0, help="closed-loop episodes through the runtime (0: skip)")
    parser.add_argument("--only", default="", help=f"';'-separated subset of: {'; '.join(LINEUP)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-export"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoints = {
        "standard": args.standard,
        "streaming": args.streaming,
        "per_action": args.per_action,
        "distilled": args.distilled,
    }
    only = [s.strip() for s in args.only.split(";") if s.strip()]
    rows = []
    for label, (which, sampler_cfg) in LINEUP.items():
        if (only and label not in only) or not checkpoints[which]:
            continue
        policy = load_policy(checkpoints[which]).eval()
        task = TaskConfig(**policy.checkpoint_config["task"])
        sampler = policy.make_sampler(sampler_cfg)
        model_dir = args.out / f"{task.name}-{sampler.name}"
        spec = task_spec(task)
        t0 = time.perf_counter()
        export_policy(policy, sampler, model_dir, spec.action_low, spec.action_high, spec.control_hz, vars(task))
        export_s = time.perf_counter() - t0
        parity = parity_check(policy, sampler, model_dir, ticks=60, batch=1)
        runtime = OnnxPolicy(model_dir, threads=1)
        row: dict[str, Any] = {
            "task": task.name,
            "sampler": label,
            "sampler_name": sampler.name,
            "network_evaluations_per_tick": sampler.nfe({} if sampler.stateful else None),
            "max_calls_per_tick": max_calls_per_tick(sampler),
            "export_s": export_s,
            "max_abs_diff_raw": parity["raw"],
            "max_abs_diff_normalized": parity["normalized"],
            **time_ticks(policy, sampler, runtime, args.ticks),
            **time_control_ticks(runtime, policy, args.ticks),
        }
        row["speedup"] = row["torch_ms_p50"] / row["onnx_ms_p50"]
        if args.episodes:
            record = evaluate_exported(model_dir, EvalSpec(task, args.episodes, out_dir=model_dir / "eval", videos=0))
            row |= {"onnx_mean_score": record["mean_score"], "onnx_success_rate": record["success_rate"]}
        print(row, flush=True)
        rows.append(row)
    columns = [
        ("task", "task"),
        ("sampler", "sampler"),
        ("NFE / tick", "network_evaluations_per_tick"),
        ("ONNX p50 ms", "onnx_ms_p50"),
        ("ONNX p99 ms", "onnx_ms_p99"),
        ("PyTorch p50 ms", "torch_ms_p50"),
        ("PyTorch p99 ms", "torch_ms_p99"),
        ("speed-up", "speedup"),
        ("max calls / tick", "max_calls_per_tick"),
        ("control tick p50 ms", "control_ms_p50"),
        ("control tick p99 ms", "control_ms_p99"),
        ("control tick max ms", "control_ms_max"),
        ("first tick ms", "first_tick_ms"),
        ("max abs diff (raw)", "max_abs_diff_raw"),
        ("max abs diff (normalized)", "max_abs_diff_normalized"),
    ]
    if args.episodes:
        columns += [("ONNX mean score", "onnx_mean_score"), ("ONNX success", "onnx_success_rate")]
    meta = {
        "ticks": args.ticks,
        "episodes": args.episodes,
        "batch": 1,
        "threads": 1,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    meta["command"] = "python -m benchmarks.export " + " ".join(sys.argv[1:])
    for row in rows:  # each row keeps the command that measured it; rows of other samplers stay from their runs
        row["command"], row["date"], row["machine"] = meta["command"], time.strftime("%Y-%m-%d %H:%M:%S"), machine()
    rows = merge_with_previous(RESULTS, "export", rows, key=lambda r: (r["task"], r["sampler"]))
    write_results(RESULTS, "export", rows, columns, meta)


if __name__ == "__main__":
    main()
