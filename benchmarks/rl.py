"""Locomotion experts, D4RL-style stores and Diffusion Policy on them, one resumable pipeline per task.

For each task (hopper, walker2d, halfcheetah), every step is a `dpstack` command (echoed and logged;
the JSON records each one, resumes included) and is skipped when its output is already complete:

1. expert: `dpstack rl train` (Gaussian PPO) for `--ppo-steps` env steps, resumed if a run exists;
2. references: a uniform random policy and the expert (mean action), `--ref-episodes` each, beside
   D4RL's published references;
3. stores: `dpstack collect expert=...` from the final policy ("expert") and from the PPO snapshot whose
   training return (mean over its last 25k env steps) is closest to a third of the expert's evaluated
   return ("medium"), `--store-steps` steps each (D4RL: 1M; the CPU budget here is stated in the JSON);
4. Diffusion Policy (`policy=mlp-locomotion`, DPPO's setting) trained on the medium store for
   `--dp-steps` steps at peak learning rate `--dp-lr` (a run made with another recipe is renamed
   aside) and evaluated on `--eval-episodes` seeds from 100000, against the store's own mean episode
   return: with its own (ancestral DDPM) sampler, which is DPPO's evaluation protocol (its
   `deterministic=True` keeps DDPM's own noise, none at the last step), and with DDPM's posterior means
   (`sampler=ddpm sampler.deterministic=true`, no noise at all).

A store collected by another checkpoint than the one chosen now (a retrained expert) is renamed aside,
with the Diffusion Policy runs trained on it, and made anew.

    python -m benchmarks.rl [--tasks hopper] [--ppo-steps 3000000] [--store-steps 200000] [--dp-steps 40000] [--dp-lr 1e-3]

Writes benchmarks/results/rl.{json,md}; runs live in runs/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experts import random_return
from benchmarks.policies import DPSTACK, run_command
from benchmarks.report import write_results
from dpstack.data.store import EpisodeStore
from dpstack.envs.locomotion import BODIES
from dpstack.tasks import TaskConfig

DDPM_MEAN = ["sampler=ddpm", "sampler.deterministic=true"]  # each reverse step's posterior mean, no noise


def _state(run: Path) -> dict[str, Any]:
    path = run / "checkpoints" / "latest" / "train_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


REUSED = "  # an earlier run's evaluation, not re-run"  # marks a command a row reads but did not run


def _eval(checkpoint: Path, out: Path, episodes: int, log: Path, commands: list[str], extra: list[str] = ()) -> dict:
    """`dpstack eval` unless an evaluation of this checkpoint with as many episodes exists."""
    record_path = out / "eval.json"
    model = (
        checkpoint / "model.safetensors"
        if (checkpoint / "model.safetensors").exists()
        else checkpoint / "checkpoints" / "latest" / "model.safetensors"
    )
    command = [DPSTACK, "eval", f"checkpoint={checkpoint}", f"out={out}", f"episodes={episodes}", "num_envs=2",
               "videos=1", "progress=false", *extra]  # fmt: skip
    line = shlex.join(["dpstack", *command[1:]])
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record and record_path.stat().st_mtime > model.stat().st_mtime and record["episodes"] == episodes:
        commands.append(line + REUSED)  # the row still names the command behind the numbers it reads
        return record
    commands.append(line)
    run_command(command, log)
    return json.loads(record_path.read_text())


def _run_log(run: Path) -> list[dict[str, Any]]:
    """The run's own command log (`<run>/commands.jsonl`, written by `dpstack`): every start and end, resumes included."""
    path = run / "commands.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _spread(record: dict) -> tuple[float, float]:
    returns = np.array([e["return"] for e in record["per_episode"]])
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0


def _return_at(history: list[dict], iteration: int, window_steps: int = 25_000) -> float:
    """The mean training return over the `window_steps` env steps up to `iteration`: one iteration's few
    episodes are noise (a late walker snapshot once logged 1,499 between iterations near 5,000), and the
    NaN of iterations in which no episode ended are skipped (a NaN key would make `min` pick at random)."""
    end = next(h["env_steps"] for h in history if h["iteration"] == iteration)
    recent = [h["return"] for h in history if end - window_steps < h["env_steps"] <= end]
    finite = [r for r in recent if math.isfinite(r)]
    return float(np.mean(finite)) if finite else math.inf


def _store_return(path: Path) -> tuple[float, int, int]:
    store = EpisodeStore.open(path)
    ends = store.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    rewards = store.read("reward")
    returns = [float(rewards[a:b].sum()) for a, b in zip(starts, ends, strict=True)]
    return float(np.mean(returns)), store.n_episodes, store.n_steps


def run_task(name: str, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    log, commands = runs / f"rl-{name}.log", []
    row: dict[str, Any] = {"task": name, "commands": commands}
    # 1. the expert
    ppo = runs / f"ppo-{name}"
    # a run that finished its own budget is kept as it is (its budget is what the row reports)
    config = json.loads((ppo / "train_config.json").read_text()) if ppo.exists() else {}
    budget = config.get("total_steps", args.ppo_steps)
    if not config or _state(ppo).get("iteration", 0) < budget // (config["num_envs"] * config["ticks"]):
        command = [DPSTACK, "rl", "train", f"task={name}", f"out={ppo}", f"total_steps={budget}",
                   "checkpoint_every=10", "snapshot_every=25", "seed=0", "progress=false"]  # fmt: skip
        if ppo.exists():
            command.append("resume=true")
        commands.append(shlex.join(["dpstack", *command[1:]]))
        run_command(command, log)
    state = _state(ppo)
    row.update(ppo_env_steps=state["env_steps"], ppo_minutes=state["train_seconds"] / 60)
    if not any(c.startswith("dpstack rl train") for c in commands):  # the run was made before: its own config
        config = json.loads((ppo / "train_config.json").read_text())
        keys = ("total_steps", "num_envs", "checkpoint_every", "snapshot_every", "seed")
        commands.insert(
            0, shlex.join(["dpstack", "rl", "train", f"task={name}", f"out={ppo}", *(f"{k}={config[k]}" for k in keys)])
        )
    # 2. references: random actions and the expert, beside D4RL's
    expert = _eval(ppo, runs / f"ppo-{name}-eval", args.ref_episodes, log, commands)
    row["expert_return"], row["expert_return_se"] = _spread(expert)
    row["expert_score"] = expert["mean_score"]
    row["random_return"] = random_return(TaskConfig(name=name), range(100000, 100000 + args.ref_episodes))
    row["d4rl_random"], row["d4rl_expert"] = BODIES[name][4], BODIES[name][5]
    # 3. stores: the expert's and a medium snapshot's (about a third of the expert's return)
    history = [json.loads(line) for line in (ppo / "metrics.jsonl").read_text().splitlines()]
    snapshots = sorted((ppo / "checkpoints").glob("iter_*"))
    target = row["expert_return"] / 3
    medium = min(snapshots, key=lambda p: abs(_return_at(history, int(p.name[5:])) - target))
    row["medium_snapshot"] = medium.name
    for quality, checkpoint in (("medium", medium), ("expert", ppo)):
        store = runs / f"{name}-{quality}.zarr"
        made_by = EpisodeStore.open(store).info()["attrs"].get("collect", {}).get("policy") if store.exists() else None
        if made_by is not None and made_by != str(checkpoint):  # another expert or snapshot: kept aside, not mixed in
            suffix = Path(made_by).name
            store.rename(store.with_name(f"{store.stem}.{suffix}.zarr"))
            if quality == "medium":  # so is everything trained on it
                for run in runs.glob(f"dp-{name}-medium*"):
                    if not run.name.endswith(suffix):
                        run.rename(run.with_name(f"{run.name}.{suffix}"))
        if not store.exists() or EpisodeStore.open(store).n_steps < args.store_steps:
            command = [DPSTACK, "collect", f"task={name}", f"expert={checkpoint}", f"steps={args.store_steps}",
                       f"out={store}", "progress=false"]  # fmt: skip
            commands.append(shlex.join(["dpstack", *command[1:]]))
            run_command(command, log)
        row[f"{quality}_store_return"], row[f"{quality}_store_episodes"], row[f"{quality}_store_steps"] = _store_return(
            store
        )
    # 4. Diffusion Policy on the medium store
    dp = runs / f"dp-{name}-medium"
    made = json.loads((dp / "train_config.json").read_text()) if (dp / "train_config.json").exists() else None
    if made is not None and (made["lr"], made["steps"]) != (args.dp_lr, args.dp_steps):  # another recipe: aside
        dp.rename(dp.with_name(f"{dp.name}.lr{made['lr']:g}-{made['steps']}"))
    if _state(dp).get("step", 0) < args.dp_steps:
        command = [DPSTACK, "train", f"task={name}", "policy=mlp-locomotion", f"dataset={runs / f'{name}-medium.zarr'}",
                   f"out={dp}", f"steps={args.dp_steps}", f"lr={args.dp_lr:g}", "batch_size=256", "eval_episodes=0",
                   "checkpoint_every=2000", "threads=2", "progress=false"]  # fmt: skip
        if dp.exists():
            command.append("resume=true")
        commands.append(shlex.join(["dpstack", *command[1:]]))
        run_command(command, log)
    record = _eval(dp, runs / f"dp-{name}-medium-eval", args.eval_episodes, log, commands)
    row["dp_return"], row["dp_return_se"] = _spread(record)
    row["dp_score"], row["dp_steps"] = record["mean_score"], args.dp_steps
    row["dp_over_medium"] = row["dp_return"] / row["medium_store_return"]
    row["run_logs"] = {run.name: _run_log(run) for run in (ppo, dp)}
    # the same chain without its reverse steps' noise (DDPM's posterior means; DPPO's protocol is the row above)
    mean = _eval(dp, runs / f"dp-{name}-medium-eval-mean", args.eval_episodes, log, commands, DDPM_MEAN)
    row["dp_mean_return"], row["dp_mean_return_se"] = _spread(mean)
    row["dp_mean_over_medium"] = row["dp_mean_return"] / row["medium_store_return"]
    print({k: v for k, v in row.items() if k not in ("commands", "run_logs")}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="hopper,walker2d,halfcheetah")
    parser.add_argument(
        "--ppo-steps", type=int, default=3_000_000, help="PPO budget of a new run (a finished run keeps its own)"
    )
    parser.add_argument("--store-steps", type=int, default=200_000)
    parser.add_argument("--dp-steps", type=int, default=40_000)
    parser.add_argument("--dp-lr", type=float, default=1e-3, help="AdamW peak learning rate of the Diffusion Policy")
    parser.add_argument("--ref-episodes", type=int, default=100)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    rows = [run_task(name, args, args.runs) for name in args.tasks.split(",")]
    previous = args.out / "rl.json"
    if previous.exists():  # keep the tasks this run did not measure
        done = {r["task"] for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if r["task"] not in done] + rows
    columns = [
        ("task", "task"),
        ("PPO env steps", "ppo_env_steps"),
        ("PPO minutes", "ppo_minutes"),
        ("expert return", "expert_return"),
        ("+-", "expert_return_se"),
        ("random return", "random_return"),
        ("D4RL random", "d4rl_random"),
        ("D4RL expert", "d4rl_expert"),
        ("medium store return", "medium_store_return"),
        ("DP on medium", "dp_return"),
        ("+- ", "dp_return_se"),
        ("DP / medium", "dp_over_medium"),
        ("DP, DDPM mean", "dp_mean_return"),
        ("+-  ", "dp_mean_return_se"),
        ("DP mean / medium", "dp_mean_over_medium"),
    ]
    meta = {
        "command": "python -m benchmarks.rl " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "note": "returns are means over episodes with their standard error; seeds from 100000; see each row's commands",
    }
    write_results(args.out, "rl", rows, columns, meta)


if __name__ == "__main__":
    main()
