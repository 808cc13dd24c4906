"""Rollout harness throughput: env steps per second, policy calls excluded, against the bare simulators.

For each task and N (environments), measured side by side in one run (median of `--repeats`):

- bare: a gymnasium vector env of the task envs (same N, async = one worker process per env, or sync)
  stepped one action per step with constant actions: the simulators' own rate with that worker layout;
- harness: `Rollouts.collect` with a policy that returns a constant chunk, in the layouts of the policies
  dpstack ships (`LAYOUTS`: observation steps and actions per tick; the rollout layer's bookkeeping
  included, the network excluded);
- old eval path: the evaluator loop before the harness (vector env stepped per tick, one shared
  `RecedingHorizon`), with the same constant chunk source.

    python -m benchmarks.rollout [--tasks pusht,hopper] [--envs 1,8,16,32] [--steps 4000]

Writes benchmarks/results/rollout.{json,md}. `--overhead` instead measures where the per-step time of each
path goes, with a simulator that does nothing (`NullEnv`: a Hopper-shaped observation, TaskEnv's info),
so the layers' own Python costs show without the simulator's noise: microseconds per env step of the bare
vector env, the old eval path, `ChunkEnv.step` alone, gymnasium's sync vector env and the harness's
`TickSyncVectorEnv` of `ChunkEnv`s, and the harness
(benchmarks/results/rollout_overhead.{json,md}); and one real Hopper env alone and inside a `ChunkEnv`, whose
difference is `ChunkEnv`'s cost next to a real simulator.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from benchmarks.report import merge_with_previous, write_results
from dpstack.envs.registry import make_env, task_spec
from dpstack.policy.execution import RecedingHorizon
from dpstack.policy.rollout import ChunkEnv, Rollouts, RolloutSpec, TickSyncVectorEnv
from dpstack.tasks import TaskConfig

# (observation steps, actions per tick) of the policies dpstack ships for each task: Push-T's Diffusion
# Policy; Hopper's Gaussian PPO (the worst case for per-step costs: one action per tick) and its Diffusion
# Policy / DPPO preset (`policy=mlp-locomotion`)
LAYOUTS = {"pusht": [(2, 8)], "hopper": [(1, 1), (1, 4)]}
Layout = tuple[int, int]


def _vector(task: TaskConfig, n: int, mode: str) -> gym.vector.VectorEnv:
    fns = [lambda: make_env(task)] * n
    if mode == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP)


def _constant_action(task: TaskConfig) -> np.ndarray:
    spec = task_spec(task)
    return (np.asarray(spec.action_low) + np.asarray(spec.action_high)) / 2


def bare(task: TaskConfig, n: int, mode: str, steps: int) -> float:
    envs = _vector(task, n, mode)
    action = np.repeat(_constant_action(task)[None], n, 0).astype(np.float32)
    envs.reset(seed=0)
    envs.step(action)  # warm-up (worker start, first step)
    ticks = max(1, steps // n)
    start = time.perf_counter()
    for _ in range(ticks):
        envs.step(action)
    elapsed = time.perf_counter() - start
    envs.close()
    return ticks * n / elapsed


def harness(task: TaskConfig, n: int, mode: str, steps: int, layout: Layout) -> float:
    obs_steps, chunk_len = layout
    spec = RolloutSpec(task, n, n_obs_steps=obs_steps, actions_per_tick=chunk_len, vectorization=mode)
    chunk = np.repeat(np.repeat(_constant_action(task)[None, None], chunk_len, 1), n, 0).astype(np.float32)
    with Rollouts(spec) as rollouts:
        rollouts.collect(lambda h: chunk, ticks=1)  # warm-up
        ticks = max(1, steps // (n * chunk_len))
        start = time.perf_counter()
        batch = rollouts.collect(lambda h: chunk, ticks=ticks)
        elapsed = time.perf_counter() - start
    return batch.env_steps / elapsed


def old_eval_path(task: TaskConfig, n: int, mode: str, steps: int, layout: Layout) -> float:
    """The evaluator's loop before the harness: per-tick vector steps through one RecedingHorizon."""
    obs_steps, chunk_len = layout
    envs = _vector(task, n, mode)
    chunk = np.repeat(np.repeat(_constant_action(task)[None, None], chunk_len, 1), n, 0).astype(np.float32)
    controller = RecedingHorizon(lambda h: chunk, obs_steps, chunk_len)
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(controller.select_action(obs))
    ticks = max(1, steps // n)
    start = time.perf_counter()
    for _ in range(ticks):
        obs, *_ = envs.step(controller.select_action(obs))
    elapsed = time.perf_counter() - start
    envs.close()
    return ticks * n / elapsed


class NullEnv(gym.Env):
    """A simulator that does nothing: Hopper's observation shape and TaskEnv's info, episodes of 1000 steps."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.task_spec = task_spec(TaskConfig(name="hopper"))
        self._obs, self._t = {"state": np.zeros(11, np.float32)}, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        self._t = 0
        return self._obs, {"return": 0.0, "score": 0.0, "is_success": False}

    def step(self, action: np.ndarray):  # type: ignore[override]
        self._t += 1
        return self._obs, 1.0, False, self._t >= 1000, {"return": 1.0, "score": 0.0, "is_success": False}


def overhead(n: int, ticks: int, repeats: int) -> list[dict]:
    """Microseconds per env step of each layer over `NullEnv` (1-action ticks, 2 observation steps, sync)."""
    action, chunk = np.zeros((n, 3), np.float32), np.zeros((n, 1, 3), np.float32)

    def per_step(run: Callable[[], int]) -> float:  # run() returns the env steps it made
        start = time.perf_counter()
        steps = run()
        return (time.perf_counter() - start) / steps * 1e6

    def bare_vector() -> int:
        envs = gym.vector.SyncVectorEnv([NullEnv] * n, autoreset_mode=AutoresetMode.SAME_STEP)
        envs.reset(seed=0)
        for _ in range(ticks):
            envs.step(action)
        return ticks * n

    def old_path() -> int:
        envs = gym.vector.SyncVectorEnv([NullEnv] * n, autoreset_mode=AutoresetMode.SAME_STEP)
        controller = RecedingHorizon(lambda h: chunk, 2, 1)
        obs, _ = envs.reset(seed=0)
        for _ in range(ticks):
            obs, *_ = envs.step(controller.select_action(obs))
        return ticks * n

    def chunk_env_alone() -> int:
        env = ChunkEnv(NullEnv(), 2, 1, 0, True)
        env.reset(seed=0)
        for _ in range(ticks * n):
            env.step(chunk[0])
        return ticks * n

    def chunk_env_vector(vector: type[gym.vector.SyncVectorEnv]) -> Callable[[], int]:
        def run() -> int:
            fns = [lambda: ChunkEnv(NullEnv(), 2, 1, 0, True, n)] * n
            envs = vector(fns, copy=False, autoreset_mode=AutoresetMode.DISABLED)
            envs.reset(seed=list(range(n)))
            for _ in range(ticks):
                envs.step(chunk)
            return ticks * n

        return run

    def harness_collect() -> int:
        rollouts = Rollouts(RolloutSpec(TaskConfig(name="hopper"), n, 2, 1, vectorization="sync"))
        rollouts._make = lambda continuous: lambda: ChunkEnv(NullEnv(), 2, 1, 0, continuous, n)
        rollouts.collect(lambda h: chunk, ticks=1)
        return rollouts.collect(lambda h: chunk, ticks=ticks).env_steps

    hopper = TaskConfig(name="hopper")
    hopper_action = _constant_action(hopper).astype(np.float32)

    def hopper_alone() -> int:  # the real simulator: its steps leave the caches cold for the layers around it
        env = make_env(hopper)
        env.reset(seed=0)
        for _ in range(ticks * n):
            if any(env.step(hopper_action)[2:4]):
                env.reset()
        return ticks * n

    def chunk_env_over_hopper() -> int:
        env = ChunkEnv(make_env(hopper), 2, 1, 0, True)
        env.reset(seed=0)
        for _ in range(ticks * n):
            env.step(hopper_action[None])
        return ticks * n

    layers = {
        "bare vector env (SAME_STEP autoreset)": bare_vector,
        "old eval path (vector env + one RecedingHorizon)": old_path,
        "ChunkEnv.step alone (one env)": chunk_env_alone,
        "gymnasium's sync vector env of ChunkEnvs": chunk_env_vector(gym.vector.SyncVectorEnv),
        "TickSyncVectorEnv of ChunkEnvs (the harness's)": chunk_env_vector(TickSyncVectorEnv),
        "harness (Rollouts.collect)": harness_collect,
        "Hopper TaskEnv.step alone (one env, real simulator)": hopper_alone,
        "ChunkEnv over Hopper (one env, real simulator)": chunk_env_over_hopper,
    }
    runs: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(repeats):  # interleaved, so the machine's drift hits every layer alike
        for name, run in layers.items():
            runs[name].append(per_step(run))
    return [
        {"layer": name, "num_envs": n, "us_per_env_step": statistics.median(v), "runs": v} for name, v in runs.items()
    ]


def add_paired_ratio(row: dict) -> None:
    """The median of per-repeat harness / old ratios: each pair ran seconds apart, so the machine's drift
    between repeats (up to 2x on these shared cores) cancels, which a ratio of medians does not do."""
    runs = row.get("runs", {})
    if runs.get("harness") and len(runs["harness"]) == len(runs.get("old", [])):
        row["harness_over_old_paired"] = statistics.median(
            h / o for h, o in zip(runs["harness"], runs["old"], strict=True)
        )


def _row_key(row: dict) -> tuple:
    return row["task"], row["obs_steps"], row["actions_per_tick"], row["num_envs"], row["mode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="pusht,hopper")
    parser.add_argument("--envs", default="1,8,16,32")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--steps", type=int, default=4000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead", action="store_true", help="per-layer microseconds per step over NullEnv")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.overhead:
        n = int(args.envs) if args.envs.isdigit() else 16  # one N here; a list (the default) means 16
        rows = overhead(n, max(1, args.steps // n), args.repeats)
        for row in rows:
            print(row["layer"], round(row["us_per_env_step"], 2), flush=True)
        command = f"python -m benchmarks.rollout --overhead --envs {n} --steps {args.steps} --repeats {args.repeats}"
        columns = [("layer", "layer"), ("N", "num_envs"), ("us per env step (median)", "us_per_env_step")]
        write_results(args.out, "rollout_overhead", rows, columns, {"command": command})
        return
    command = "python -m benchmarks.rollout " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "overhead")
    )
    measured = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for name in args.tasks.split(","):
        task = TaskConfig(name=name, max_steps=300 if name == "pusht" else None)
        for layout, n in itertools.product(LAYOUTS[name], (int(v) for v in args.envs.split(","))):
            for mode in args.modes.split(","):
                if mode == "async" and n == 1:
                    continue
                runs = {"bare": [], "harness": [], "old": []}
                for _ in range(args.repeats):  # interleaved, so drift hits all three alike
                    runs["bare"].append(bare(task, n, mode, args.steps))
                    runs["harness"].append(harness(task, n, mode, args.steps, layout))
                    runs["old"].append(old_eval_path(task, n, mode, args.steps, layout))
                row = {
                    "task": name,
                    "num_envs": n,
                    "mode": mode,
                    "obs_steps": layout[0],
                    "actions_per_tick": layout[1],
                    **{f"{k}_sps": statistics.median(v) for k, v in runs.items()},
                }
                row["bare_over_harness"] = row["bare_sps"] / row["harness_sps"]
                row["harness_over_old"] = row["harness_sps"] / row["old_sps"]
                row.update(runs=runs, measured=measured, command=command)  # rows of several runs share the table
                print(row, flush=True)
                rows.append(row)
    # keep the rows (task, layout, N, workers) this run did not measure
    rows = merge_with_previous(args.out, "rollout", rows, key=_row_key)
    rows.sort(key=_row_key)
    for row in rows:
        add_paired_ratio(row)
    columns = [
        ("task", "task"),
        ("N", "num_envs"),
        ("workers", "mode"),
        ("obs steps", "obs_steps"),
        ("actions / tick", "actions_per_tick"),
        ("bare sim steps/s", "bare_sps"),
        ("harness steps/s", "harness_sps"),
        ("old eval path steps/s", "old_sps"),
        ("bare / harness", "bare_over_harness"),
        ("harness / old", "harness_over_old"),
        ("harness / old, paired", "harness_over_old_paired"),
        ("measured", "measured"),
    ]
    meta = {
        "command": command,
        "note": "medians of interleaved repeats; constant actions, no network: the rollout layer's own cost; "
        "each row names the run (command, date) that measured it",
    }
    write_results(args.out, "rollout", rows, columns, meta)


if __name__ == "__main__":
    main()
