"""Closed-loop evaluation of a policy on a task: vectorized envs, fixed seeds, eval.json, videos.

Episode i runs on seed ``seed + i``. Environments step in lockstep waves of `num_envs`; the policy acts
through `RecedingHorizon` (the same execution the ROS node uses). The score of an episode is the task
env's ``info["score"]`` at its end (Push-T: max coverage score; mazes: normalized return; robosuite:
success) and success is its latched ``info["is_success"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dpstack.envs.registry import make_env
from dpstack.policy.execution import ChunkFn, ChunkSource, RecedingHorizon, resolve_latency_steps
from dpstack.tasks import TaskConfig

EXTRA_INFO_KEYS = ("max_coverage", "return")


def _make(task: TaskConfig) -> Callable[[], gym.Env]:
    return lambda: make_env(task)


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """mp4 through imageio-ffmpeg; falls back to gif if no encoder is available."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        imageio.mimwrite(path.with_suffix(".mp4"), frames, fps=fps, macro_block_size=1)
        return path.with_suffix(".mp4")
    except (ImportError, RuntimeError, OSError, ValueError):
        imageio.mimwrite(path.with_suffix(".gif"), frames, duration=1000 / fps)
        return path.with_suffix(".gif")


def run_episodes(
    task: TaskConfig,
    predict_chunk: ChunkSource | ChunkFn,
    n_obs_steps: int,
    actions_per_tick: int,
    episodes: int,
    seed: int,
    num_envs: int = 1,
    video_dir: Path | None = None,
    videos: int = 2,
    progress: bool = False,
    latency_steps: int = 0,
) -> dict[str, Any]:
    """Run `episodes` episodes; returns per-episode results and per-tick latencies (ms).

    `predict_chunk` is reset (if it has `reset()`) at the start of every wave of episodes.
    """
    num_envs = max(1, min(num_envs, episodes))
    if num_envs == 1:
        envs: gym.vector.VectorEnv = gym.vector.SyncVectorEnv([_make(task)])
    else:
        envs = gym.vector.AsyncVectorEnv([_make(task)] * num_envs, context="spawn")
    controller = RecedingHorizon(predict_chunk, n_obs_steps, actions_per_tick, latency_steps)
    results: list[dict[str, Any]] = []
    ticks_ms: list[float] = []
    inference_ms: list[float] = []
    frames: dict[int, list[np.ndarray]] = {}
    fps = envs.call("control_hz")[0] if video_dir else 10.0
    try:
        for wave_start in range(0, episodes, num_envs):
            seeds = [seed + wave_start + i for i in range(num_envs)]
            obs, _ = envs.reset(seed=seeds)
            controller.reset()
            done = np.zeros(num_envs, bool)
            final: list[dict[str, Any] | None] = [None] * num_envs
            steps = np.zeros(num_envs, int)
            while not done.all():
                if video_dir is not None and wave_start < videos:  # rendering is costly: only when kept
                    for i, frame in enumerate(envs.call("render")):
                        if wave_start + i < videos and not done[i]:
                            frames.setdefault(wave_start + i, []).append(np.asarray(frame))
                start = time.perf_counter()
                action = controller.select_action(obs)
                elapsed = (time.perf_counter() - start) * 1000
                ticks_ms.append(elapsed)
                if controller.last_tick_inferred:
                    inference_ms.append(elapsed)
                obs, _, terminated, truncated, infos = envs.step(action)
                for i in np.flatnonzero(~done & (terminated | truncated)):
                    final[i] = {
                        "seed": seeds[i],
                        "success": bool(infos["is_success"][i]),
                        "score": float(infos["score"][i]),
                        "steps": int(steps[i] + 1),
                        # task-specific extras, e.g. Push-T's raw max_coverage, a maze's return
                        **{k: float(infos[k][i]) for k in EXTRA_INFO_KEYS if k in infos},
                    }
                steps += ~done
                done |= terminated | truncated
            results.extend(r for r in final[: min(num_envs, episodes - wave_start)] if r is not None)
            if progress:
                print(
                    f"  {len(results)}/{episodes} episodes, success so far {np.mean([r['success'] for r in results]):.2f}",
                    flush=True,
                )
    finally:
        envs.close()
    video_paths = (
        [str(write_video(video_dir / f"episode_{i:03d}", f, fps)) for i, f in sorted(frames.items())]
        if video_dir
        else []
    )
    return {"episodes": results, "ticks_ms": ticks_ms, "inference_ms": inference_ms, "videos": video_paths}


def summarize(
    task: TaskConfig, sampler: str, nfe_per_action: float, run: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The eval.json record."""
    episodes = run["episodes"]
    ticks = np.asarray(run["ticks_ms"]) if run["ticks_ms"] else np.zeros(1)
    return {
        "task": task.name,
        "sampler": sampler,
        "episodes": len(episodes),
        "seeds": [e["seed"] for e in episodes],
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "mean_score": float(np.mean([e["score"] for e in episodes])),
        "nfe_per_action": nfe_per_action,
        "tick_ms_p50": float(np.percentile(ticks, 50)),
        "tick_ms_p99": float(np.percentile(ticks, 99)),
        "inference_ms_p50": float(np.percentile(run["inference_ms"], 50)) if run["inference_ms"] else 0.0,
        "mean_steps": float(np.mean([e["steps"] for e in episodes])),
        **{
            f"mean_{k}": float(np.mean([e[k] for e in episodes]))
            for k in EXTRA_INFO_KEYS
            if episodes and k in episodes[0]
        },
        "per_episode": episodes,
        "videos": run["videos"],
        **extra,
    }


def write_eval(out_dir: Path, record: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def evaluate_source(
    source: Any,
    n_obs_steps: int,
    sampler_name: str,
    task: TaskConfig,
    episodes: int,
    seed: int,
    num_envs: int = 1,
    out_dir: Path | None = None,
    videos: int = 2,
    progress: bool = False,
    latency_steps: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Evaluate a chunk source that counts its work (`actions_per_tick`, `network_evaluations`, `reset()`).

    Writes `<out_dir>/eval.json` and videos when out_dir is given. `nfe_per_action` is measured: the
    network evaluations that ran over the executed ticks, each episode's first tick included.
    """
    run = run_episodes(
        task,
        source,
        n_obs_steps,
        source.actions_per_tick,
        episodes,
        seed,
        num_envs,
        video_dir=(out_dir / "videos") if out_dir and videos else None,
        videos=videos,
        progress=progress,
        latency_steps=latency_steps,
    )
    nfe_per_action = source.network_evaluations / max(1, len(run["ticks_ms"]))
    measured = source.eval_fields() if hasattr(source, "eval_fields") else {}  # e.g. a planner's planning time
    record = summarize(task, sampler_name, nfe_per_action, run, latency_steps=latency_steps, **measured, **extra)
    if out_dir is not None:
        write_eval(out_dir, record)
    return record


def evaluate_policy(
    policy: Any,
    task: TaskConfig,
    episodes: int,
    seed: int,
    sampler: Any = None,
    num_envs: int = 1,
    out_dir: Path | None = None,
    videos: int = 2,
    progress: bool = False,
    latency_steps: int = 0,
) -> dict[str, Any]:
    """Evaluate a DiffusionPolicy with a sampler (default: the policy's); noise from a generator seeded by `seed`."""
    import torch

    sampler = sampler or policy.default_sampler()
    predicted = sampler.chunk_length(policy.cfg.horizon) - (policy.cfg.n_obs_steps - 1)
    latency_steps = resolve_latency_steps(
        latency_steps, policy.actions_per_tick(sampler), predicted, f"sampler {sampler.name}"
    )
    session = policy.session(sampler, torch.Generator().manual_seed(seed))
    was_training = policy.training
    policy.eval()
    try:
        return evaluate_source(
            session,
            policy.cfg.n_obs_steps,
            sampler.name,
            task,
            episodes,
            seed,
            num_envs,
            out_dir,
            videos,
            progress,
            latency_steps,
            backend="torch",
        )
    finally:
        policy.train(was_training)


def evaluate_exported(
    model_dir: str | Path,
    task: TaskConfig,
    episodes: int,
    seed: int,
    num_envs: int = 1,
    out_dir: Path | None = None,
    videos: int = 2,
    progress: bool = False,
    latency_steps: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """`evaluate_policy` through the PyTorch-free runtime on a `dpstack export` directory."""
    from dpstack.policy.runtime import OnnxPolicy

    runtime = OnnxPolicy(model_dir, threads=threads, seed=seed)
    latency_steps = resolve_latency_steps(
        latency_steps, runtime.actions_per_tick, int(runtime.meta["actions_per_output"]), f"the export {model_dir}"
    )
    return evaluate_source(
        runtime,
        runtime.n_obs_steps,
        runtime.meta["sampler"]["name"],
        task,
        episodes,
        seed,
        num_envs,
        out_dir,
        videos,
        progress,
        latency_steps,
        backend="onnx",
        model=str(model_dir),
        weights_sha256=runtime.meta["weights_sha256"],
    )
