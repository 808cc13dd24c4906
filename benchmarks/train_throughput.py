"""Training throughput: `dpstack train` against the reference Diffusion Policy training loop, the
pieces of one training step, and scaling from one to two torchrun ranks.

Same data (a Push-T store of expert demonstrations), same network (U-Net small: down dims 64/128/256,
step embedding 128, kernel 5, 4.5 M parameters), batch 64, horizon 16, 2 observation steps, on this
machine's CPU. Parts (each writes `benchmarks/results/train_throughput_<part>.{json,md}`):

  speed      steps/s, interleaved runs (dpstack, reference, dpstack, ...; A-B-A), each a fresh process:
             dpstack with OpenMP's ACTIVE and PASSIVE wait policy, dpstack on 2 torchrun ranks, and the
             reference loop (real-stanford/diffusion_policy, run from ../shared/peers in its own venv).
             Step time = the median of consecutive steps after 20 warm-up steps; dpstack's come from
             metrics.jsonl (`train_s`), so they include its logging and EMA, as the reference's do.
  precision  one process, fp32 against bf16 autocast, alternating step by step: the training step and one
             convolution alone.
  floor      one process: the FLOPs of a training step (FlopCounterMode), this machine's fp32 matmul rate,
             the compute floor they give, and where the step's time goes (torch.profiler: convolutions
             against everything else) as multiples of that floor.
  mish       one process: the training step with dpstack's Mish (`policy/denoisers/mish.py`) against
             PyTorch's `nn.Mish`, alternating step by step.
  breakdown  one process, the phases of a step (data, forward, backward, clipping, optimizer, EMA) with
             each of dpstack's step-level choices off (the plain PyTorch way) and on, side by side.
  scaling    time to a fixed validation loss with 1 rank x 2 threads and 2 ranks x 1 thread (torchrun,
             gloo), same global batch and schedule; `--scaling-device cuda --scaling-ranks 1` gives a
             GPU's row (one GPU: NCCL needs one GPU per rank).
  gpu        on a CUDA machine: steps/s of `dpstack train device=cuda` against the reference loop on CUDA
             as its workspace runs it (benchmarks/reference_train_cuda.py), interleaved, with U-Net small at
             batch 64 and the paper's low-dim U-Net (65.8 M) at batch 256.

    python -m benchmarks.train_throughput --part speed --reference-python /tmp/refvenv/bin/python \
        --reference-code /tmp/refdp      # setup: ../shared/peers/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.report import write_results

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
WARMUP = 20
COMMON = ["task=pusht", "eval_episodes=0", "progress=false", "checkpoint_every=1000000", "seed=0"]


def _step_times(run_dir: Path) -> list[float]:
    """Seconds of each step after the warm-up, from a dpstack run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["train_s"] for r in records if "loss" in r]
    return [b - a for a, b in zip(seconds[WARMUP:], seconds[WARMUP + 1 :], strict=False)]


def _dpstack_command(store: Path, out: Path, steps: int, ranks: int, extra: list[str]) -> list[str]:
    args = [f"dataset={store}", f"out={out}", f"steps={steps}", *COMMON, *extra]
    if ranks == 1:
        return [sys.executable, "-m", "dpstack.cli", "train", "threads=2", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return [*launcher, "-m", "dpstack.cli", "train", "threads=1", *args]


def run_dpstack(store: Path, steps: int, ranks: int, wait_policy: str, extra: list[str] = ()) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        extra = list(extra) if any(e.startswith("warmup_steps=") for e in extra) else ["warmup_steps=500", *extra]
        command = _dpstack_command(store, out, steps + WARMUP + 1, ranks, extra)
        env = {**os.environ, "OMP_WAIT_POLICY": wait_policy}
        subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=ROOT)
        times = _step_times(out)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "side": "dpstack",
        "ranks": ranks,
        "threads_per_rank": 2 if ranks == 1 else 1,
        "omp_wait_policy": wait_policy,
        "steps": len(times),
        "step_s_median": statistics.median(times),
        "steps_per_s": len(times) / sum(times),
        "command": " ".join(command[1:]),
        "records": records,
    }


def run_reference(npz: Path, steps: int, python: str, code: str) -> dict[str, Any]:
    command = [python, str(PEERS / "reference_dp_train.py"), str(npz), str(steps)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"REF": code}
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "side": "reference",
        "ranks": 1,
        "threads_per_rank": 2,
        "omp_wait_policy": "(unset: libgomp default)",
        "steps": steps,
        "step_s_median": result["step_s_median"],
        "steps_per_s": result["steps_per_s"],
        "command": f"REF={code} {' '.join(command)}",
    }


def part_speed(args: argparse.Namespace) -> None:
    npz = None
    if args.reference_python:
        npz = Path(tempfile.mkdtemp()) / "store.npz"
        subprocess.run([sys.executable, str(PEERS / "store_to_npz.py"), str(args.store), str(npz)], check=True)
    cases = [("dpstack", 1, "ACTIVE"), ("reference", 1, ""), ("dpstack", 1, "PASSIVE"), ("dpstack", 2, "PASSIVE")]
    rows = []
    for round_index in range(args.rounds):
        for side, ranks, policy in cases:
            if side == "reference" and npz is None:
                continue
            if side == "reference":
                row = run_reference(npz, args.steps, args.reference_python, args.reference_code)
            else:
                row = run_dpstack(args.store, args.steps, ranks, policy)
                row.pop("records")
            rows.append({"round": round_index, **row})
            print({k: v for k, v in rows[-1].items() if k != "command"}, flush=True)
    closing = run_dpstack(args.store, args.steps, 1, "ACTIVE")  # the closing A of A-B-A
    closing.pop("records")
    rows.append({"round": args.rounds, **closing})
    reference = [r["steps_per_s"] for r in rows if r["side"] == "reference"]
    summary = []
    for side, ranks, policy in cases:
        rates = [
            r["steps_per_s"]
            for r in rows
            if (r["side"], r["ranks"]) == (side, ranks) and (side == "reference" or r["omp_wait_policy"] == policy)
        ]
        if not rates:
            continue
        median = statistics.median(rates)
        summary.append(
            {
                "case": f"{side}, {ranks} rank(s), OMP_WAIT_POLICY={policy or 'unset'}",
                "runs": len(rates),
                "steps_per_s_median": median,
                "steps_per_s_min": min(rates),
                "steps_per_s_max": max(rates),
                "vs_reference": median / statistics.median(reference) if reference else float("nan"),
            }
        )
    write_results(
        Path(args.out),
        args.speed_name,
        summary,
        columns=[
            ("case", "case"),
            ("runs", "runs"),
            ("steps/s (median of runs)", "steps_per_s_median"),
            ("min", "steps_per_s_min"),
            ("max", "steps_per_s_max"),
            ("x reference", "vs_reference"),
        ],
        meta={"store": str(args.store), "steps_per_run": args.steps, "cores": os.cpu_count(), "runs": rows},
    )


def _pusht_unet(store_path: Path) -> tuple[Any, Any]:
    """The benchmark's network (`dpstack train`'s default U-Net for Push-T) and its windows, 2 torch threads."""
    import torch

    from dpstack.config import load_config
    from dpstack.data.dataset import SequenceDataset
    from dpstack.data.store import EpisodeStore
    from dpstack.envs.registry import task_spec
    from dpstack.methods import build_policy
    from dpstack.policy.normalizer import Normalizer
    from dpstack.train import TrainConfig

    torch.set_num_threads(2)
    cfg = load_config("train", TrainConfig, ["task=pusht", f"dataset={store_path}", "out=unused"])
    spec, store = task_spec(cfg.task), EpisodeStore.open(store_path)
    normalizer = Normalizer.fit(store, {"action": "minmax", **{k: f.normalize for k, f in spec.features.items()}})
    policy = build_policy(cfg.policy, spec.features, spec.action_feature, normalizer)
    return policy, SequenceDataset(store.path, list(spec.features), **policy.data_timing())


def part_breakdown(args: argparse.Namespace) -> None:
    """The phases of a training step, the plain PyTorch way and dpstack's way, alternating step by step."""
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # before torch loads OpenMP
    import copy
    import time

    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from dpstack.data.dataset import batch_loader
    from dpstack.policy.module import ema_update

    policy, dataset = _pusht_unet(args.store)
    ema = copy.deepcopy(policy).requires_grad_(False)

    def loop_ema(decay: float) -> None:  # the per-parameter loop (Diffusion Policy's EMAModel does this)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), policy.parameters(), strict=True):
                e.mul_(decay).add_(p, alpha=1 - decay)

    order = RandomSampler(dataset, replacement=True, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    ways = {
        "plain": {
            "data": iter(DataLoader(dataset, batch_size=64, sampler=order)),
            "optimizer": torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6),
            "clip": lambda: torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0),
            "ema": loop_ema,
        },
        "dpstack": {
            "data": iter(batch_loader(dataset, order, 64)),
            "optimizer": torch.optim.AdamW(
                policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True
            ),
            "clip": lambda: torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0),  # foreach=True: no gain
            "ema": lambda decay: ema_update(ema, policy, decay),
        },
    }
    phases = ["data", "forward", "backward", "clip", "optimizer", "ema", "step"]
    times: dict[str, dict[str, list[float]]] = {way: {p: [] for p in phases} for way in ways}
    for step in range(2 * (args.steps + WARMUP)):
        way = "plain" if step % 2 == 0 else "dpstack"  # alternate, so both see the same machine
        parts = ways[way]
        marks = [time.perf_counter()]
        batch = next(parts["data"])
        marks.append(time.perf_counter())
        loss, _ = policy.compute_loss(batch)
        marks.append(time.perf_counter())
        parts["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        parts["clip"]()
        marks.append(time.perf_counter())
        parts["optimizer"].step()
        marks.append(time.perf_counter())
        parts["ema"](0.999)
        marks.append(time.perf_counter())
        if step >= 2 * WARMUP:
            for phase, start, end in zip(phases, marks, marks[1:], strict=False):
                times[way][phase].append(end - start)
            times[way]["step"].append(marks[-1] - marks[0])
    rows = []
    for phase in phases:
        plain, mine = (statistics.median(times[w][phase]) * 1000 for w in ways)
        rows.append({"phase": phase, "plain_ms": plain, "dpstack_ms": mine, "saved_ms": plain - mine})
        print(rows[-1], flush=True)
    write_results(
        Path(args.out),
        "train_throughput_breakdown",
        rows,
        columns=[
            ("phase", "phase"),
            ("plain PyTorch ms (median)", "plain_ms"),
            ("dpstack ms (median)", "dpstack_ms"),
            ("saved ms", "saved_ms"),
        ],
        meta={
            "store": str(args.store),
            "steps_each": args.steps,
            "plain": "per-window DataLoader + default collate; AdamW (foreach); clip_grad_norm_ (per tensor); "
            "per-parameter EMA loop",
            "dpstack": "batch_loader (one gather per batch); AdamW(fused=True); ema_update (torch._foreach_lerp_)",
            "forward/backward/clip": "the same code in both (clip_grad_norm_ with foreach=True measured no faster); "
            "their differences are noise",
        },
    )


def part_precision(args: argparse.Namespace) -> None:
    """fp32 against bf16 autocast on this CPU, alternating step by step in one process: the whole training step
    (forward, backward, fused AdamW) and, for scale, one of the U-Net's convolutions alone (forward + backward)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # before torch loads OpenMP
    import time

    import torch
    from torch.utils.data import RandomSampler

    from dpstack.data.dataset import batch_loader

    policy, dataset = _pusht_unet(args.store)
    order = RandomSampler(dataset, replacement=True, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    data = iter(batch_loader(dataset, order, 64))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True)
    conv = torch.nn.Conv1d(256, 256, 5, padding=2)  # the U-Net's widest convolution, at its batch and length
    conv_input = torch.randn(64, 256, 4, requires_grad=True)

    def training_step(bf16: bool) -> None:
        batch = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def convolution(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(conv_input)
        out.float().sum().backward()

    rows = []
    for what, run, steps in (("training step", training_step, args.steps), ("one Conv1d 256->256", convolution, 300)):
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * (steps + WARMUP)):
            bf16 = i % 2 == 1  # alternate, so both see the same machine
            start = time.perf_counter()
            run(bf16)
            if i >= 2 * WARMUP:
                times[bf16].append(time.perf_counter() - start)
        fp32_ms, bf16_ms = (statistics.median(times[b]) * 1000 for b in (False, True))
        rows.append({"what": what, "fp32_ms": fp32_ms, "bf16_ms": bf16_ms, "bf16_speedup": fp32_ms / bf16_ms})
        print(rows[-1], flush=True)
    write_results(
        Path(args.out),
        "train_throughput_precision",
        rows,
        columns=[
            ("what", "what"),
            ("fp32 ms (median)", "fp32_ms"),
            ("bf16 autocast ms", "bf16_ms"),
            ("fp32 / bf16", "bf16_speedup"),
        ],
        meta={
            "store": str(args.store),
            "steps_each": args.steps,
            "command": f"python -m benchmarks.train_throughput --part precision --steps {args.steps}",
        },
    )


def part_floor(args: argparse.Namespace) -> None:
    """How far the training step is from this machine's compute floor, and which ops take its time."""
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # before torch loads OpenMP
    import copy
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.data import RandomSampler
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.floor import matmul_gflops
    from dpstack.data.dataset import batch_loader
    from dpstack.policy.module import ema_update

    policy, dataset = _pusht_unet(args.store)
    ema = copy.deepcopy(policy).requires_grad_(False)
    order = RandomSampler(dataset, replacement=True, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    data = iter(batch_loader(dataset, order, 64))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True)

    def training_step() -> None:  # dpstack train's step (`benchmarks.train_throughput --part breakdown`)
        loss, _ = policy.compute_loss(next(data))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, policy, 0.999)

    counter = FlopCounterMode(display=False)
    with counter:
        training_step()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    gflop = counter.get_total_flops() / 1e9
    conv_gflop = sum(n for op, n in by_op.items() if "convolution" in op) / 1e9
    rate = matmul_gflops(2)
    for _ in range(WARMUP):
        training_step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        training_step()
        times.append(time.perf_counter() - start)
    profiled = min(args.steps, 50)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(profiled):
            training_step()
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / profiled for e in prof.key_averages()}
    profiled_ms = sum(self_ms.values())
    conv_ms = sum(ms for op, ms in self_ms.items() if "convolution" in op)
    step_ms = statistics.median(times) * 1000
    floor_ms = gflop / rate * 1e3
    scale = step_ms / profiled_ms  # the profiler's own cost left out
    top = sorted(((ms, op) for op, ms in self_ms.items() if "convolution" not in op), reverse=True)[:6]
    rows = [
        {"what": "training step (median; forward, backward, clip, fused AdamW, EMA)", "ms": step_ms, "gflop": gflop},
        {"what": "compute floor: every FLOP at the measured matmul rate", "ms": floor_ms, "gflop": gflop},
        {"what": "convolutions, forward + backward (profiler self time)", "ms": conv_ms * scale, "gflop": conv_gflop},
        {
            "what": "everything else (profiler self time)",
            "ms": (profiled_ms - conv_ms) * scale,
            "gflop": gflop - conv_gflop,
        },
        *({"what": f"  of which {op}", "ms": ms * scale, "gflop": 0.0} for ms, op in top),
    ]
    for row in rows:
        row["x_floor"] = row["ms"] / floor_ms
        row["gflops"] = row["gflop"] / row["ms"] * 1e3 if row["gflop"] else None
        print(row, flush=True)
    write_results(
        Path(args.out),
        "train_throughput_floor",
        rows,
        columns=[
            ("what", "what"),
            ("ms per step", "ms"),
            ("GFLOP", "gflop"),
            ("GFLOP/s", "gflops"),
            ("x compute floor", "x_floor"),
        ],
        meta={
            "store": str(args.store),
            "steps": args.steps,
            "profiled_steps": profiled,
            "threads": 2,
            "matmul_gflops": rate,
            "flops_by_op_gflop": {op: n / 1e9 for op, n in by_op.items()},
            "note": "profiler self times are scaled to the unprofiled median step (the profiler adds its own cost)",
            "command": f"python -m benchmarks.train_throughput --part floor --steps {args.steps}",
        },
    )


def part_mish(args: argparse.Namespace) -> None:
    """dpstack's training Mish (`policy/denoisers/mish.py`) against PyTorch's `nn.Mish` in the same network,
    alternating step by step in one process (the module's class is swapped; parameters and batches shared)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # before torch loads OpenMP
    import time

    import torch
    from torch.utils.data import RandomSampler

    from dpstack.data.dataset import batch_loader
    from dpstack.policy.denoisers.mish import Mish

    policy, dataset = _pusht_unet(args.store)
    activations = [m for m in policy.modules() if isinstance(m, torch.nn.Mish)]
    order = RandomSampler(dataset, replacement=True, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    data = iter(batch_loader(dataset, order, 64))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True)
    times: dict[str, list[float]] = {"torch": [], "dpstack": []}
    for i in range(2 * (args.steps + WARMUP)):
        way = "torch" if i % 2 == 0 else "dpstack"  # alternate, so both see the same machine
        for module in activations:
            module.__class__ = torch.nn.Mish if way == "torch" else Mish
        start = time.perf_counter()
        loss, _ = policy.compute_loss(next(data))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2 * WARMUP:
            times[way].append(time.perf_counter() - start)
    torch_ms, ours_ms = (statistics.median(times[w]) * 1000 for w in ("torch", "dpstack"))
    rows = [{"what": "training step (forward, backward, fused AdamW)", "mish_modules": len(activations),
             "torch_ms": torch_ms, "dpstack_ms": ours_ms, "speedup": torch_ms / ours_ms}]  # fmt: skip
    print(rows[0], flush=True)
    write_results(
        Path(args.out),
        "train_throughput_mish",
        rows,
        columns=[
            ("what", "what"),
            ("Mish modules", "mish_modules"),
            ("nn.Mish ms (median)", "torch_ms"),
            ("dpstack Mish ms (median)", "dpstack_ms"),
            ("speed-up", "speedup"),
        ],
        meta={
            "store": str(args.store),
            "steps_each": args.steps,
            "threads": 2,
            "command": f"python -m benchmarks.train_throughput --part mish --steps {args.steps}",
        },
    )


GPU_NETWORKS = {  # name: (dpstack overrides, the reference's down dims, step embedding, batch)
    "U-Net small, batch 64": (["policy.preset=small", "batch_size=64"], "64,128,256", 128, 64),
    "U-Net lowdim (paper), batch 256": (["policy.preset=lowdim", "batch_size=256"], "256,512,1024", 256, 256),
}


def part_gpu(args: argparse.Namespace) -> None:
    import torch

    npz = args.npz
    if npz is None:
        npz = Path(tempfile.mkdtemp()) / "store.npz"
        subprocess.run([sys.executable, str(args.npz_script), str(args.store), str(npz)], check=True)
    rows: list[dict[str, Any]] = []

    def report() -> None:  # after every run: a call cut short by its time limit keeps what it measured
        summary = []
        for network in GPU_NETWORKS:
            reference = [r["steps_per_s"] for r in rows if r["network"] == network and r["side"] == "reference"]
            for side, case in (("reference", "reference (fp32)"), ("dpstack", "dpstack, fp32")):
                rates = [r["steps_per_s"] for r in rows if (r["network"], r["side"]) == (network, side)]
                if rates:
                    median = statistics.median(rates)
                    summary.append({
                        "network": network, "case": case,
                        "runs": len(rates), "steps_per_s_median": median, "steps_per_s_min": min(rates),
                        "steps_per_s_max": max(rates),
                        "vs_reference": median / statistics.median(reference) if reference else float("nan"),
                    })  # fmt: skip
        columns = [("network", "network"), ("case", "case"), ("runs", "runs"),
                   ("steps/s (median of runs)", "steps_per_s_median"), ("min", "steps_per_s_min"),
                   ("max", "steps_per_s_max"), ("x reference", "vs_reference")]  # fmt: skip
        meta = {"invocation": " ".join(sys.argv), "store": str(args.store), "steps_per_run": args.steps,
                "gpu": torch.cuda.get_device_name(0),
                "torch": torch.__version__, "cores": os.cpu_count(), "runs": rows}  # fmt: skip
        write_results(Path(args.out), "train_throughput_gpu", summary, columns=columns, meta=meta)

    # rounds: each network's dpstack run, then the reference's; a failed run is printed and the others still run
    for round_index in range(args.rounds):
        for network, (overrides, down_dims, embed, batch) in GPU_NETWORKS.items():
            try:
                row = run_dpstack(args.store, args.steps, 1, "ACTIVE", ["device=cuda", *overrides])
                row.pop("records")
                rows.append({"round": round_index, "network": network, **row})
            except subprocess.CalledProcessError as exc:
                print(f"{network}, dpstack: failed\n{exc.stderr[-3000:]}", flush=True)
            if args.reference_python:
                command = [args.reference_python, str(args.reference_script), str(npz), str(args.steps),
                           down_dims, str(embed), str(batch)]  # fmt: skip
                done = subprocess.run(command, env=os.environ | {"REF": args.reference_code}, capture_output=True,
                                      text=True)  # fmt: skip
                if done.returncode:
                    print(f"{network}, reference: failed\n{done.stderr[-3000:]}", flush=True)
                else:
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    rows.append({"round": round_index, "network": network, **result,
                                 "command": f"REF={args.reference_code} {' '.join(command)}"})  # fmt: skip
            print([{k: v for k, v in r.items() if k != "command"} for r in rows[-2:]], flush=True)
            report()


def part_scaling(args: argparse.Namespace) -> None:
    extra = [f"warmup_steps={args.scaling_steps // 10}", "val_every=100", f"device={args.scaling_device}"]
    rows = []
    for ranks in (int(r) for r in args.scaling_ranks.split(",")):
        run = run_dpstack(
            args.store, args.scaling_steps - WARMUP - 1, ranks, "PASSIVE" if ranks > 1 else "ACTIVE", extra
        )
        validation = [(r["step"], r["train_s"], r["val_loss"]) for r in run["records"] if "val_loss" in r]
        reached = next(((step, seconds) for step, seconds, loss in validation if loss <= args.target_val_loss), None)
        rows.append(
            {
                "ranks": ranks,
                "device": args.scaling_device,
                "threads_per_rank": run["threads_per_rank"],
                "steps_per_s": run["steps_per_s"],
                "target_val_loss": args.target_val_loss,
                "step_at_target": reached[0] if reached else None,
                "seconds_to_target": reached[1] if reached else None,
                "final_val_loss": validation[-1][2],
                "validation": validation,
                "command": run["command"],
            }
        )
        print({k: v for k, v in rows[-1].items() if k != "validation"}, flush=True)
    write_results(
        Path(args.out),
        args.scaling_name,
        rows,
        columns=[
            ("ranks", "ranks"),
            ("device", "device"),
            ("threads per rank", "threads_per_rank"),
            ("steps/s", "steps_per_s"),
            ("step reaching the target", "step_at_target"),
            ("seconds to the target", "seconds_to_target"),
            ("final validation loss", "final_val_loss"),
        ],
        meta={
            "store": str(args.store),
            "steps": args.scaling_steps,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=["speed", "breakdown", "floor", "mish", "precision", "scaling", "gpu"], default="speed"
    )
    parser.add_argument("--store", type=Path, default=ROOT / "runs" / "pusht200.zarr")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (after 20 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=2, help="speed: rounds of the interleaved cases")
    parser.add_argument("--reference-python", default="", help="the side venv's python (../shared/peers)")
    parser.add_argument("--reference-code", default="", help="the folder holding the reference's diffusion_policy")
    parser.add_argument("--reference-script", type=Path, default=ROOT / "benchmarks" / "reference_train_cuda.py",
                        help="gpu: the reference's CUDA driver")  # fmt: skip
    parser.add_argument("--npz", type=Path, default=None, help="gpu: the store already written as .npz")
    parser.add_argument("--npz-script", type=Path, default=PEERS / "store_to_npz.py", help="gpu: store -> npz")
    parser.add_argument("--speed-name", default="train_throughput_speed", help="speed: results file stem")
    parser.add_argument("--scaling-steps", type=int, default=1200)
    parser.add_argument("--target-val-loss", type=float, default=0.06)
    parser.add_argument("--scaling-ranks", default="1,2", help="scaling: the world sizes to run")
    parser.add_argument("--scaling-device", default="cpu", help="scaling: the training device (cpu | cuda | auto)")
    parser.add_argument("--scaling-name", default="train_throughput_scaling", help="scaling: results file stem")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not args.store.exists():
        sys.exit(
            f"{args.store}: no such store; make one with `dpstack collect task=pusht episodes=200 out={args.store}`"
        )
    if args.reference_python and not (Path(args.reference_python).exists() and Path(args.reference_code).is_dir()):
        sys.exit(
            f"--reference-python {args.reference_python} / --reference-code {args.reference_code}: not found; "
            f"set them up as {PEERS / 'README.md'} says, or leave them out to measure dpstack alone"
        )
    parts = {
        "speed": part_speed,
        "breakdown": part_breakdown,
        "floor": part_floor,
        "mish": part_mish,
        "precision": part_precision,
        "scaling": part_scaling,
        "gpu": part_gpu,
    }
    parts[args.part](args)


if __name__ == "__main__":
    main()
