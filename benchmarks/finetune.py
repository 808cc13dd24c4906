"""DPPO against the Gaussian baseline, from the same demonstrations, on the same harness and budget.

For each task, every step is a `dpstack` command (echoed, logged, recorded in the JSON with its
resumes) and is skipped when its output is complete:

1. pretrained: for locomotion, the Diffusion Policy on the task's medium store that
   `python -m benchmarks.rl` made (runs/dp-<task>-medium, runs/<task>-medium.zarr); for Push-T and Lift,
   a deliberately weak one made here (`WEAK`: Push-T, a short pretraining on the scripted expert's
   demonstrations, runs/pusht200.zarr; Lift, a full pretraining on noisy demonstrations,
   runs/lift100-noise0.3.zarr; collected if missing);
2. DPPO: `dpstack finetune` from it for `--steps` env steps (resumed if the run exists);
3. the baseline: a Gaussian MLP behaviour-cloned on the same store (`dpstack train policy=gaussian`),
   then fine-tuned by the same PPO harness for the same env steps (`dpstack rl train init=...`; fewer with
   `--baseline-steps`, for a baseline that has already converged);
4. `dpstack eval` of all four policies on `--eval-episodes` seeds from 100000 (never the seeds that the
   runs evaluated on during training, which start at 200000): the diffusion policies' own ancestral DDPM
   is DPPO's evaluation protocol (its `deterministic=True` keeps DDPM's own noise, none at the last step);
   both are evaluated again with DDPM's posterior means (`sampler=ddpm sampler.deterministic=true`);
5. curves (training return of both runs and DPPO's evaluations during training against env steps) and
   where DPPO's time goes (policy inference, simulation + harness, update; medians per iteration).

    python -m benchmarks.finetune [--tasks halfcheetah] [--steps 1000000] [--eval-episodes 50]

Writes benchmarks/results/finetune.{json,md} and finetune_<task>.png; runs live in runs/.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.policies import DPSTACK, run_command
from benchmarks.report import write_results
from benchmarks.rl import DDPM_MEAN, REUSED, _eval, _run_log, _spread, _state

# DPPO's published end returns (Ren et al. 2024, Gym; ../shared/reference.md section 4)
PUBLISHED = {"hopper": 3246.0, "walker2d": 3843.0, "halfcheetah": 5310.0}


# The weak manipulation starting points, made here. Push-T: a U-Net a quarter as wide as the `small` preset (1.1 M
# parameters, so the update through the fine-tuned steps is affordable on 2 cores) with DPPO's 20 DDPM levels, stopped
# at 7,500 of a 10,000-step cosine schedule on 200 expert demonstrations: it pushes the T most of the way (score ~0.8 on
# validation seeds from 200000) but almost never finishes (success 0 of 20 there), which leaves DPPO the last part to
# learn. Lift: DPPO's own robomimic actor shape (the MLP preset: 4-action chunks from 1 observation, 20 DDPM levels)
# trained to the end of its schedule on 100 scripted demonstrations made with action noise 0.3 (the issue's "noisy
# demonstrations", DPPO's multi-human data in spirit): a converged denoiser of a poor demonstrator, success 0.20
# ancestral and 0.00 DDPM mean on the 50 evaluation seeds. (The earlier Lift start, 500 of 1,000 steps on clean
# demonstrations, was an unconverged denoiser whose frozen first denoising steps DPPO cannot repair: finetune_log.md.)
@dataclass(frozen=True)
class WeakStart:
    demos: int
    overrides: tuple[str, ...]
    steps: int  # the schedule's length
    stop: int  # where the pretraining stops
    noise: float = 0.0  # the scripted expert's action noise
    tag: str = ""  # names this start's runs apart from the task's earlier ones (runs/dp-<task>-<tag>, ...)
    recipe: str = ""  # names the fine-tuning runs of the task's current configs/dppo recipe (runs/dppo-<task>-<recipe>)

    def store(self, name: str) -> str:
        return f"{name}{self.demos}" + (f"-noise{self.noise:g}" if self.noise else "") + ".zarr"

    def suffix(self) -> str:
        return "".join(f"-{part}" for part in (self.tag, self.recipe) if part)

    def pretrained(self, name: str) -> str:
        return f"dp-{name}-{self.tag or 'weak'}"


WEAK = {
    "pusht": WeakStart(
        200,
        ("policy=unet", "+policy.denoiser_kwargs.down_dims=[32,64,128]", "policy.num_train_timesteps=20"),
        10_000,
        7_500,
        recipe="success",  # configs/dppo/pusht.yaml since the 5M run: the success reward, noise floors 0.01
    ),
    "lift": WeakStart(100, ("policy=mlp-locomotion",), 5_000, 5_000, noise=0.3, tag="noisy"),
}


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finished(run: Path, steps: int) -> bool:
    """Whether a fine-tuning run did all the iterations of a `steps` budget (ticks x envs x executed actions each)."""
    latest = run / "checkpoints" / "latest"
    if not (latest / "train_state.json").exists():
        return False
    config = json.loads((run / "train_config.json").read_text())
    executed = json.loads((latest / "config.json").read_text())["policy"]["n_action_steps"]
    return _state(run)["iteration"] >= steps // (config["num_envs"] * config["ticks"] * executed)


def _run(command: list[str], run: Path, done: bool, log: Path, commands: list[str]) -> None:
    """Run (or resume) `command` unless `done`; record what was run."""
    if done:
        return
    if run.exists():
        command = [*command, "resume=true"]
    commands.append(shlex.join(["dpstack", *command[1:]]))
    run_command(command, log)


def plot(task: str, dppo: list[dict], ppo: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, history, style in (("DPPO (training)", dppo, "-"), ("Gaussian PPO from BC (training)", ppo, "--")):
        points = [(h["env_steps"], h["return"]) for h in history if np.isfinite(h.get("return", np.nan))]
        if points:
            ax.plot(*zip(*points, strict=True), style, alpha=0.7, label=label)
    evals = [(h["env_steps"], h["eval_return"], h["eval_return_se"]) for h in dppo if "eval_return" in h]
    if evals:
        x, y, se = (np.array(v) for v in zip(*evals, strict=True))
        ax.errorbar(x, y, yerr=se, marker="o", label="DPPO (evaluations during training)")
    ax.set_title(task)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pretrained(name: str, runs: Path, log: Path, commands: list[str]) -> tuple[Path, Path]:
    """The Diffusion Policy to fine-tune and the store it learned from (made here for the manipulation tasks)."""
    if name not in WEAK:
        pretrained, store = runs / f"dp-{name}-medium", runs / f"{name}-medium.zarr"
        if not (pretrained / "checkpoints" / "latest").exists() or not store.exists():
            raise SystemExit(f"{pretrained} or {store} is missing: run `python -m benchmarks.rl --tasks {name}` first")
        return pretrained, store
    weak = WEAK[name]
    pretrained, store = runs / weak.pretrained(name), runs / weak.store(name)
    noise = [f"noise={weak.noise:g}"] if weak.noise else []
    _run([DPSTACK, "collect", f"task={name}", f"episodes={weak.demos}", *noise, f"out={store}", "workers=2"],
         store, store.exists(), log, commands)  # fmt: skip
    done = _state(pretrained).get("step", 0)  # `stop_after` counts this invocation's steps: a resume does the rest
    _run([DPSTACK, "train", f"task={name}", *weak.overrides, f"dataset={store}", f"out={pretrained}",
          f"steps={weak.steps}", f"stop_after={weak.stop - done}", "checkpoint_every=500", "threads=1",
          "eval_episodes=0", "progress=false"], pretrained, done >= weak.stop, log, commands)  # fmt: skip
    return pretrained, store


def _reward(run: Path) -> str | None:
    """The reward a run's checkpoint evaluates with (its task's `env.reward`; None: the task's only one)."""
    config = json.loads((run / "checkpoints" / "latest" / "config.json").read_text())
    return config.get("task", {}).get("env", {}).get("reward")


def _record(row: dict[str, Any], prefix: str, record: dict, success: bool) -> None:
    """An evaluation's return (mean, standard error) into `row`, and for success tasks its success rate
    (binomial standard error) and score."""
    row[f"{prefix}_return"], row[f"{prefix}_return_se"] = _spread(record)
    if success:
        rate, n = float(record["success_rate"]), len(record["per_episode"])
        row[f"{prefix}_success"] = rate
        row[f"{prefix}_success_se"] = float(np.sqrt(rate * (1 - rate) / n)) if n else 0.0
        row[f"{prefix}_score"] = float(record["mean_score"])


def _ratio(after: float, before: float) -> float | None:
    """after / before, or None where the start scored 0 (Lift's noisy start under DDPM mean: success 0.00)."""
    return after / before if before else None


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = args.runs
    log, commands = runs / f"finetune-{name}.log", []
    baseline_steps = args.baseline_steps or args.steps
    row: dict[str, Any] = {"task": name, "commands": commands, "budget_env_steps": args.steps,
                           "baseline_budget_env_steps": baseline_steps}  # fmt: skip
    pretrained, store = _pretrained(name, runs, log, commands)
    success = name not in PUBLISHED  # manipulation: success and score beside the return
    # 2. DPPO
    suffix = WEAK[name].suffix() if name in WEAK else ""
    dppo = runs / f"dppo-{name}{suffix}"
    _run([DPSTACK, "finetune", f"checkpoint={pretrained}", f"task={name}", f"out={dppo}", f"total_steps={args.steps}",
          f"eval_every={args.eval_every}", "progress=false"], dppo, _finished(dppo, args.steps), log, commands)  # fmt: skip
    # 3. the Gaussian baseline: clone, then the same PPO harness and budget
    bc, ppo = runs / f"bc-gaussian-{name}{suffix}", runs / f"ppo-bc-{name}{suffix}"
    _run([DPSTACK, "train", f"task={name}", "policy=gaussian", f"dataset={store}", f"out={bc}",
          f"steps={args.bc_steps}", "batch_size=256", "eval_episodes=0", "threads=2", "progress=false"],
         bc, _state(bc).get("step", 0) >= args.bc_steps, log, commands)  # fmt: skip
    _run([DPSTACK, "rl", "train", f"task={name}", f"init={bc}", f"out={ppo}", f"total_steps={baseline_steps}",
          "checkpoint_every=10", "progress=false"],
         ppo, _state(ppo).get("env_steps", 0) >= baseline_steps - 8 * 256, log, commands)  # fmt: skip
    # 4. the four policies on the same evaluation seeds
    for key, checkpoint in (("pretrained", pretrained), ("dppo", dppo), ("bc", bc), ("ppo_bc", ppo)):
        out = runs / f"{checkpoint.name}-eval"
        _record(row, key, _eval(checkpoint, out, args.eval_episodes, log, commands), success)
    # a return ratio only where both summed the same reward (Push-T's DPPO trains and so evaluates on `success`)
    comparable = _reward(dppo) == _reward(pretrained)
    row["dppo_over_pretrained"] = _ratio(row["dppo_return"], row["pretrained_return"]) if comparable else None
    row["run_logs"] = {run.name: _run_log(run) for run in (pretrained, dppo, bc, ppo)}
    # both diffusion policies again with DDPM's posterior means (no noise; DPPO's protocol is the ancestral row)
    for key, checkpoint in (("pretrained", pretrained), ("dppo", dppo)):
        out = runs / f"{checkpoint.name}-eval-mean"
        _record(row, f"{key}_mean", _eval(checkpoint, out, args.eval_episodes, log, commands, DDPM_MEAN), success)
    row["dppo_mean_over_pretrained_mean"] = (
        _ratio(row["dppo_mean_return"], row["pretrained_mean_return"]) if comparable else None
    )
    row["published_dppo"] = PUBLISHED.get(name)
    # 5. curves and time
    dppo_history, ppo_history = _history(dppo), _history(ppo)
    plot(name, dppo_history, ppo_history, args.out / f"finetune_{name}.png")
    row["dppo_env_steps"] = dppo_history[-1]["env_steps"]
    row["ppo_env_steps"] = ppo_history[-1]["env_steps"]
    for key in ("rollout_s", "inference_s", "update_s", "sps"):
        row[f"dppo_{key}"] = float(np.median([h[key] for h in dppo_history]))
    row["dppo_iteration_s"] = row["dppo_rollout_s"] + row["dppo_update_s"]
    row["dppo_simulation_s"] = row["dppo_rollout_s"] - row["dppo_inference_s"]
    row["dppo_eval_curve"] = [
        {"env_steps": h["env_steps"], "return": h["eval_return"], "se": h["eval_return_se"]}
        for h in dppo_history
        if "eval_return" in h
    ]
    print({k: v for k, v in row.items() if k not in ("commands", "run_logs", "dppo_eval_curve")}, flush=True)
    return row


def _same_runs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new`'s runs are `old`'s, resumed: every run both rows log began with the same invocation."""

    def first_starts(row: dict[str, Any]) -> dict[str, str]:
        return {name: log[0].get("started") for name, log in row.get("run_logs", {}).items() if log}

    before, now = first_starts(old), first_starts(new)
    shared = before.keys() & now.keys()
    return bool(shared) and all(before[name] == now[name] for name in shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="halfcheetah")
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps of each fine-tuning run")
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=None,
        help="env steps of the Gaussian baseline's PPO (default: --steps; less when it has already converged and the"
        " CPU time goes to DPPO, recorded in the row as baseline_budget_env_steps)",
    )
    parser.add_argument("--bc-steps", type=int, default=20_000, help="behaviour-cloning steps of the baseline")
    parser.add_argument("--eval-every", type=int, default=25, help="DPPO iterations between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = [run_task(name, args) for name in args.tasks.split(",")]
    previous = args.out / "finetune.json"
    if previous.exists():  # keep the tasks this run did not measure, and the commands behind resumed runs
        before = {r["task"]: r for r in json.loads(previous.read_text())["rows"]}
        for row in rows:  # a stage that resumed a run also stands on the earlier invocations' commands
            old = before.get(row["task"], {})
            if _same_runs(old, row):  # not when the runs were made anew (a lost run directory, a new pretraining)
                ran = [c for c in old.get("commands", []) if not c.endswith(REUSED)]  # reused ones are listed anew
                row["earlier_commands"] = old.get("earlier_commands", []) + ran
        measured = {r["task"] for r in rows}
        rows = [r for task, r in before.items() if task not in measured] + rows
    columns = [
        ("task", "task"),
        ("env steps", "dppo_env_steps"),
        ("baseline env steps", "ppo_env_steps"),
        ("pretrained DP", "pretrained_return"),
        ("DPPO", "dppo_return"),
        ("+-", "dppo_return_se"),
        ("DPPO / pretrained", "dppo_over_pretrained"),
        ("pretrained, DDPM mean", "pretrained_mean_return"),
        ("DPPO, DDPM mean", "dppo_mean_return"),
        ("+-  ", "dppo_mean_return_se"),
        ("ratio, DDPM mean", "dppo_mean_over_pretrained_mean"),
        ("DPPO published", "published_dppo"),
        ("Gaussian BC", "bc_return"),
        ("Gaussian BC + PPO", "ppo_bc_return"),
        ("+- ", "ppo_bc_return_se"),
        ("success: pretrained", "pretrained_success"),
        ("DPPO", "dppo_success"),
        ("pretrained, DDPM mean", "pretrained_mean_success"),
        ("DPPO, DDPM mean", "dppo_mean_success"),
        ("Gaussian BC + PPO", "ppo_bc_success"),
        ("score: pretrained", "pretrained_score"),
        ("DPPO ", "dppo_score"),
        ("pretrained, DDPM mean ", "pretrained_mean_score"),
        ("DPPO, DDPM mean ", "dppo_mean_score"),
        ("Gaussian BC + PPO ", "ppo_bc_score"),
        ("s / iteration", "dppo_iteration_s"),
        ("inference s", "dppo_inference_s"),
        ("simulation s", "dppo_simulation_s"),
        ("update s", "dppo_update_s"),
        ("env steps / s", "dppo_sps"),
    ]
    meta = {
        "command": "python -m benchmarks.finetune "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "note": "returns: mean over --eval-episodes seeds from 100000 with the standard error; see each row's commands."
        " Success and score (manipulation): over the same seeds. Push-T's returns sum the reward each checkpoint"
        " carries (DPPO's and its Gaussian baseline's: `success`, the clones': coverage), so its return ratios are"
        " empty.",
    }
    write_results(args.out, "finetune", rows, columns, meta)


if __name__ == "__main__":
    main()
