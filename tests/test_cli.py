"""Subprocess smoke tests of the `dpstack` command line, as a user runs it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpstack.bounds import OUTPUT_DIRECTORY, bounds, check_bounds, field_violation
from dpstack.cli import COMMANDS, Command
from dpstack.config import compose_raw, load_config, to_schema
from dpstack.data.store import EpisodeStore
from dpstack.errors import ConfigError
from dpstack.policy.rl.dppo import DPPOConfig
from dpstack.policy.samplers import SAMPLERS, ChunkSampler, DDIMOptions
from dpstack.policy.schedulers import DDIMScheduler, NoiseSchedule
from tests.test_robomimic_import import _write_robomimic

DPSTACK = str(Path(sys.executable).with_name("dpstack"))


def dpstack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DPSTACK, *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands() -> None:
    result = dpstack("--help")
    assert result.returncode == 0
    assert "dataset info" in result.stdout and "dataset import robomimic" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c.words) for c in COMMANDS])
def test_every_command_has_help_with_its_keys(command: Command) -> None:
    result = dpstack(*command.words, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: dpstack " + " ".join(command.words) in result.stdout
    assert "keys (defaults from" in result.stdout
    shown = {line.split(" = ")[0].strip() for line in result.stdout.splitlines() if " = " in line}
    assert shown == {f.name for f in dataclasses.fields(importlib.import_module(command.module).Config)}


def test_dataset_info_prints_json(small_store: EpisodeStore) -> None:
    result = dpstack("dataset", "info", str(small_store.path), "verify=true")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 3 and summary["steps"] == 15 and summary["verified"] is True
    assert summary["keys"]["state"] == {"shape": [15, 3], "dtype": "float32", "chunk_steps": 21}


def test_dataset_info_checks_the_store_against_a_task_spec(small_store: EpisodeStore) -> None:
    result = dpstack("dataset", "info", str(small_store.path), "for_task=pointmaze-umaze")
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["task"]
    assert task["name"] == "pointmaze-umaze" and task["matches"] is False
    assert task["problems"] == [
        "missing key(s) ['goal'] (task pointmaze-umaze needs ['action', 'goal', 'state'])",
        "key 'state' has per-step shape (3,), task pointmaze-umaze expects (4,)",
    ]


def test_unknown_key_is_rejected_with_the_valid_keys(small_store: EpisodeStore) -> None:
    result = dpstack("dataset", "info", str(small_store.path), "verbose=true")
    assert result.returncode == 2
    assert "unknown key 'verbose'" in result.stderr and "valid keys: store, verify, for_task" in result.stderr


def test_bad_value_type_and_missing_value_are_rejected() -> None:
    result = dpstack("dataset", "info", "/tmp/x", "verify=maybe")
    assert result.returncode == 2 and "verify" in result.stderr
    result = dpstack("dataset", "info")
    assert result.returncode == 2 and "missing value for key 'store'" in result.stderr


def test_unknown_command() -> None:
    result = dpstack("datset", "info")
    assert result.returncode == 2 and "unknown command 'dpstack datset'" in result.stderr


def test_missing_store_is_one_clear_line(tmp_path: Path) -> None:
    result = dpstack("dataset", "info", str(tmp_path / "missing.zarr"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.zarr'}: episode store not found"


def test_import_robomimic_then_info(tmp_path: Path) -> None:
    _write_robomimic(tmp_path / "can.hdf5", [3, 4, 5])
    out = tmp_path / "can store=1.zarr"  # a path with a space and '=' still works as a positional
    result = dpstack("dataset", "import", "robomimic", str(tmp_path / "can.hdf5"), f"out='{out}'", "progress=false")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["episodes"] == 3
    info = json.loads(dpstack("dataset", "info", str(out)).stdout)
    assert info["keys"]["robot0_eef_pos"]["shape"] == [12, 3]


# ---------------------------------------------------------------------- value ranges (dpstack.bounds)
@pytest.mark.parametrize(
    ("rule", "value", "problem"),
    [
        (bounds(1), 1, None),
        (bounds(1), 0, "x=0 must be >= 1"),
        (bounds(0, open_low=True), 0.0, "x=0.0 must be > 0"),
        (bounds(0, open_low=True), 1e-9, None),
        (bounds(0, 1, open_high=True), 1.0, "x=1.0 must be in [0, 1)"),
        (bounds(0, 1), 1.0, None),
        (bounds(0, 99), 100, "x=100 must be in [0, 99]"),
        (bounds(1), None, None),  # None is a field's "default" where it allows it
        (bounds(1), "???", None),  # a missing value is reported as missing, elsewhere
    ],
)
def test_field_violation_names_the_key_and_the_range(rule: dict, value: object, problem: str | None) -> None:
    @dataclasses.dataclass
    class Schema:
        x: float | None = dataclasses.field(default=None, metadata=rule)

    assert field_violation(dataclasses.fields(Schema)[0], value) == problem


def test_out_of_range_values_are_one_line_naming_the_key() -> None:
    result = dpstack("eval", "checkpoint=/nonexistent", "out=/tmp/unused", "episodes=0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: bad config for 'dpstack eval': episodes=0 must be >= 1"
    result = dpstack("train", "task=pusht", "dataset=/nonexistent", "out=/tmp/unused", "val_ratio=1.5")
    assert result.returncode == 2 and "val_ratio=1.5 must be in [0, 1)" in result.stderr
    result = dpstack("rl", "train", "task=hopper", "out=/tmp/unused", "task.max_steps=0")  # a nested schema
    assert result.returncode == 2 and "task.max_steps=0 must be >= 1" in result.stderr
    assert "; must be >= 1" in dpstack("eval", "--help").stdout  # --help shows each bounded key's range


def test_sampler_options_are_range_checked_before_any_rollout() -> None:
    with pytest.raises(ConfigError, match="num_inference_steps=0 must be >= 1"):
        to_schema(DDIMOptions, {"num_inference_steps": 0}, "sampler ddim")
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 20\], got 500"):
        ChunkSampler(DDIMScheduler(NoiseSchedule(20)), 500)  # more levels than the schedule: at construction


def test_a_plain_key_named_like_a_config_group_is_a_value_not_a_group_choice(tmp_path: Path) -> None:
    # finetune's `sampler` is a string (the Gaussian chain), and configs/sampler/ is also a config group:
    # hydra alone refuses `sampler=ddim` ("No match in the defaults list"), which read as an unknown key
    overrides = ["checkpoint=ck", "out=run", "task=pusht", "sampler=ddim", "num_inference_steps=5"]
    cfg = load_config("finetune", DPPOConfig, overrides)
    assert (cfg.sampler, cfg.num_inference_steps, cfg.task.name) == ("ddim", 5, "pusht")
    assert cfg.min_sampling_std == 0.01  # the task's own preset (configs/dppo/pusht.yaml) is still pulled
    with pytest.raises(ConfigError, match="sampler: 'euler' is not a Gaussian chain"):
        load_config("finetune", DPPOConfig, ["checkpoint=ck", "out=run", "sampler=euler"])
    for bad in ("sampler=ddim,ddpm", "+sampler=ddim", "~sampler"):  # a sweep, a group append, a deletion
        with pytest.raises(ConfigError, match=f"{re.escape(bad)}: give one value, sampler=<value>"):
            load_config("finetune", DPPOConfig, ["checkpoint=ck", "out=run", bad])
    result = dpstack(
        "finetune", f"checkpoint={tmp_path / 'none'}", "task=pusht", f"out={tmp_path / 'run'}", "sampler=ddim"
    )
    assert result.returncode != 0 and "unknown key" not in result.stderr and str(tmp_path / "none") in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c.words) for c in COMMANDS])
def test_every_shipped_default_is_within_its_bounds(command: Command) -> None:
    module = importlib.import_module(command.module)
    check_bounds(module.Config, OmegaConf.to_container(compose_raw(module.CONFIG_NAME)))
    for preset in ("dppo=pusht", "dppo=lift"):  # the per-task presets finetune picks
        if module.CONFIG_NAME == "finetune":
            check_bounds(module.Config, OmegaConf.to_container(compose_raw("finetune", [preset])))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_shipped_sampler_default_is_within_its_bounds(name: str) -> None:
    raw = compose_raw(f"sampler/{name}")
    check_bounds(SAMPLERS[name], OmegaConf.to_container(OmegaConf.select(raw, "sampler")))


def test_an_output_directory_that_is_a_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    for command in (["eval", "checkpoint=/nonexistent"], ["train", "task=pusht", "dataset=/nonexistent"]):
        result = dpstack(*command, f"out={existing}")
        assert result.returncode == 2 and f"out={existing} exists and is not a directory" in result.stderr
    assert existing.read_text() == "mine"  # nothing was written over it

    @dataclasses.dataclass
    class Schema:
        out: str = dataclasses.field(default="", metadata=OUTPUT_DIRECTORY)

    out = dataclasses.fields(Schema)[0]
    assert field_violation(out, str(tmp_path)) is None and field_violation(out, str(tmp_path / "new")) is None


def test_a_training_command_logs_its_start_before_it_runs_and_a_failed_start_blocks_no_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("train", "task=pusht", f"dataset={tmp_path / 'missing.zarr'}", f"out={run}")
    for _ in range(2):  # the second start is not refused as "already holds a run": the log alone is no run
        result = dpstack(*args)
        assert result.returncode == 2 and "missing.zarr" in result.stderr and "already holds" not in result.stderr
    assert [p.name for p in run.iterdir()] == ["commands.jsonl"]
    log = [json.loads(line) for line in (run / "commands.jsonl").read_text().splitlines()]
    assert [(r["event"], r.get("exit")) for r in log] == [("start", None), ("end", "error")] * 2
    assert log[0]["argv"] == ["dpstack", *args]
