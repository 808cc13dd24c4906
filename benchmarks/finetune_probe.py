"""Compare DPPO fine-tuning runs that differ in one setting (e.g. the actor learning rate), from their logs.

A probe is a set of `dpstack finetune` runs from one pretrained checkpoint, made side by side; this
summarizes each run's `metrics.jsonl`: the exploring training episodes of the first iterations (the
critic warm-up: the pretrained policy) against the last ones, the evaluations during training, and where
the time went. It runs nothing itself; the JSON records the commands that made the runs.

    python -m benchmarks.finetune_probe --name dppo_pusht_lr \
        --run "actor_lr 1e-4=benchmarks/results/dppo_pusht_probe/lr1e-4.metrics.jsonl" \
        --run "actor_lr 1e-5=benchmarks/results/dppo_pusht_probe/lr1e-5.metrics.jsonl" \
        --commands benchmarks/results/dppo_pusht_probe/commands.txt --machine "..."

Writes benchmarks/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_results


def _pooled(history: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Episode-weighted mean of a per-iteration metric, the standard error of the per-iteration means
    (iteration-to-iteration spread, since the logs keep no per-episode values) and the episode count."""
    rows = [h for h in history if h["episodes"] and math.isfinite(h[key])]
    weights = np.array([h["episodes"] for h in rows], dtype=float)
    values = np.array([h[key] for h in rows])
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.average(values, weights=weights)), se, int(weights.sum())


def summarize(label: str, history: list[dict[str, Any]], first: int, last: int) -> dict[str, Any]:
    head, tail = history[:first], history[-last:]
    row: dict[str, Any] = {"run": label, "iterations": len(history), "env_steps": history[-1]["env_steps"]}
    for part, chunk in (("start", head), ("end", tail)):
        row[f"{part}_iterations"] = [h["iteration"] for h in chunk]
        for key in ("return", "score", "success"):
            row[f"{part}_{key}"], row[f"{part}_{key}_se"], row[f"{part}_episodes"] = _pooled(chunk, key)
    evals = [h for h in history if "eval_return" in h]
    row["eval_curve"] = [{k: h[k] for k in ("env_steps", "eval_return", "eval_return_se", "eval_score",
                                            "eval_success")} for h in evals]  # fmt: skip
    if evals:
        row["last_eval_score"], row["last_eval_return"] = evals[-1]["eval_score"], evals[-1]["eval_return"]
    for key in ("rollout_s", "inference_s", "update_s", "sps"):
        row[f"median_{key}"] = float(np.median([h[key] for h in history]))
    return row


def parse_run(spec: str) -> tuple[str, Path]:
    """`--run LABEL=path/to/metrics.jsonl`: split at the first '=' whose right side is a file (a label may
    hold '=', K'=5, and so may a path, runs/lr=1e-4/metrics.jsonl)."""
    for at in (i for i, char in enumerate(spec) if char == "="):
        if at > 0 and Path(spec[at + 1 :]).is_file():
            return spec[:at], Path(spec[at + 1 :])
    raise SystemExit(f"--run {spec!r}: expected LABEL=path/to/metrics.jsonl of an existing file")


def first_iterations(history: list[dict[str, Any]], count: int, source: str) -> list[dict[str, Any]]:
    """The rows of iterations 1..count; refuses a run (`source`, for the message) that has not reached `count`."""
    rows = [h for h in history if h["iteration"] <= count]
    if len(rows) < count:
        raise SystemExit(f"--iterations {count}: {source} has {len(rows)} iterations")
    return rows


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in runs.items():
        steps = [h["env_steps"] for h in history]
        line = axes[0].plot(steps, [h["score"] for h in history], label=f"{label}: training (exploring)")[0]
        evals = [h for h in history if "eval_score" in h]
        axes[0].plot([h["env_steps"] for h in evals], [h["eval_score"] for h in evals], "o--", color=line.get_color(),
                     label=f"{label}: evaluation during training")  # fmt: skip
        axes[1].plot(steps, [h["return"] for h in history], color=line.get_color(), label=label)
    axes[0].set_ylabel("score (max coverage / 0.95, clipped)")
    axes[1].set_ylabel("training return (per episode, the run's reward)")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="results file stem")
    parser.add_argument("--run", action="append", required=True, help="LABEL=path/to/metrics.jsonl (repeat)")
    parser.add_argument("--commands", type=Path, help="text file: the commands that made the runs")
    parser.add_argument("--machine", default="", help="where the runs were made (recorded as is)")
    parser.add_argument("--first", type=int, default=2, help="iterations that describe the start (critic warm-up)")
    parser.add_argument("--last", type=int, default=4, help="iterations that describe the end")
    parser.add_argument(
        "--iterations", type=int, help="compare each run over its first N iterations only (runs of other lengths)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    for spec in args.run:
        label, path = parse_run(spec)
        history = [json.loads(line) for line in path.read_text().splitlines()]
        runs[label] = first_iterations(history, args.iterations, str(path)) if args.iterations else history
    rows = [summarize(label, history, args.first, args.last) for label, history in runs.items()]
    columns = [
        ("run", "run"), ("env steps", "env_steps"), ("start score", "start_score"), ("+-", "start_score_se"),
        ("end score", "end_score"), ("+-", "end_score_se"), ("start return", "start_return"),
        ("end return", "end_return"), ("+-", "end_return_se"), ("start success", "start_success"),
        ("end success", "end_success"), ("last eval score (during training)", "last_eval_score"),
        ("s rollout", "median_rollout_s"), ("s inference", "median_inference_s"), ("s update", "median_update_s"),
        ("env steps / s", "median_sps"),
    ]  # fmt: skip
    meta = {
        "machine": args.machine,
        "commands": args.commands.read_text().splitlines() if args.commands else [],
        "sources": args.run,
        "note": f"start = iterations 1..{args.first}, end = the last {args.last}"
        + (f" of the first {args.iterations}" if args.iterations else "")
        + "; +- is the standard error of the per-iteration means (the logs keep no per-episode values)",
    }
    write_results(args.out, args.name, rows, columns, meta)
    plot(runs, args.out / f"{args.name}.png")
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
