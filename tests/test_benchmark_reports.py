"""The benchmarks' bookkeeping that the README's tables stand on: pooling seed blocks, carrying commands over."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from benchmarks.few_step import pooled
from benchmarks.finetune import WEAK, _ratio, _same_runs
from benchmarks.finetune_probe import first_iterations, parse_run


def _block(sampler: str, seed: int, score: float, diff: float, se: float, checkpoint: str = "student") -> dict:
    return {
        "task": "pusht",
        "sampler": sampler,
        "checkpoint": checkpoint,
        "reference_checkpoint": "teacher",
        "first_seed": seed,
        "episodes": 50,
        "nfe_per_action": 1.0,
        "mean_score": score,
        "success_rate": 0.5,
        "diff_vs_ddpm100": diff,
        "diff_se": se,
    }


def test_pooled_blocks_average_and_combine_standard_errors() -> None:
    rows = [
        _block("ddpm-100", 1, 0.9, 0.0, 0.0, "teacher"),
        _block("ddpm-100", 2, 0.8, 0.0, 0.0, "teacher"),
        _block("consistency-8", 1, 0.88, -0.02, 0.03),
        _block("consistency-8", 2, 0.80, 0.0, 0.04),
    ]
    row = next(r for r in pooled(rows) if r["sampler"] == "consistency-8")
    assert row["episodes"] == 100 and row["first_seeds"] == "1,2"
    assert row["mean_score"] == pytest.approx(0.84)
    assert row["reference_score"] == pytest.approx(0.85)
    assert row["diff_vs_ddpm100"] == pytest.approx(-0.01)
    assert row["diff_se"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)  # 0.025


def test_pooled_refuses_blocks_of_different_sizes_and_leaves_a_missing_reference_empty() -> None:
    uneven = [
        _block("consistency-8", 1, 0.9, 0.0, 0.03),
        {**_block("consistency-8", 2, 0.9, 0.0, 0.03), "episodes": 20},
    ]
    with pytest.raises(ValueError, match="different sizes"):
        pooled(uneven)
    (row,) = pooled([_block("consistency-8", 3, 0.9, 0.0, 0.03)])  # no DDPM-100 row on seed block 3
    assert row["reference_score"] is None


def test_a_finetune_row_keeps_earlier_commands_only_for_the_same_runs_resumed() -> None:
    def row(*starts: str) -> dict:
        return {"run_logs": {f"run{i}": [{"started": s}, {"started": "later"}] for i, s in enumerate(starts)}}

    assert _same_runs(row("a", "b"), row("a", "b"))
    assert not _same_runs(row("a", "b"), row("a", "c"))  # one run made anew
    assert not _same_runs({}, row("a"))  # nothing to compare: a first measurement


def test_a_finetune_ratio_over_a_zero_start_is_left_empty_and_weak_starts_name_their_own_runs() -> None:
    assert _ratio(0.46, 0.2) == pytest.approx(2.3)
    assert _ratio(0.46, 0.0) is None  # Lift's noisy start scores 0.00 under DDPM mean: no crash, no infinity
    lift, pusht = WEAK["lift"], WEAK["pusht"]
    # apart from the clean runs
    assert (lift.store("lift"), lift.pretrained("lift"), lift.suffix()) == (
        "lift100-noise0.3.zarr",
        "dp-lift-noisy",
        "-noisy",
    )
    # Push-T keeps its weak start, and the success recipe's runs are named apart from the earlier progress runs
    assert (pusht.store("pusht"), pusht.pretrained("pusht"), pusht.suffix()) == (
        "pusht200.zarr",
        "dp-pusht-weak",
        "-success",
    )


def test_a_probe_run_label_may_hold_an_equals_sign_and_a_bad_spec_names_itself(tmp_path: Path) -> None:
    metrics = tmp_path / "lr=1e-4" / "a.metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("{}\n")
    assert parse_run(f"DDIM-5, K'=5={metrics}") == ("DDIM-5, K'=5", metrics)
    for spec in (str(metrics), f"label={tmp_path / 'missing.jsonl'}", f"label={tmp_path}", "label="):
        with pytest.raises(SystemExit, match=rf"--run {re.escape(repr(spec))}: expected LABEL=path/to/metrics\.jsonl"):
            parse_run(spec)


def test_a_probe_compares_runs_over_their_first_iterations_and_names_a_short_run() -> None:
    history = [{"iteration": i, "env_steps": 100 * i} for i in (1, 2, 3, 4)]
    assert [h["iteration"] for h in first_iterations(history, 3, "long.jsonl")] == [1, 2, 3]
    with pytest.raises(SystemExit, match=r"--iterations 5: short\.jsonl has 4 iterations"):
        first_iterations(history, 5, "short.jsonl")
