"""Run an exported policy (`dpstack export`) with numpy and onnxruntime only: no PyTorch on the robot.

    policy = OnnxPolicy("exports/pusht-streaming")
    policy.reset(seed=0)
    action = policy.act({"agent_pos": ..., "keypoints": ...})   # one control tick, (Da,) or (B, Da)

The runtime keeps the sampler's state between ticks (the first tick of an episode runs
policy_start.onnx, the later ones policy.onnx), draws the noise from a numpy generator, and queues
actions with the same `RecedingHorizon` as the PyTorch evaluator. Observations are checked against
policy.json (keys, per-step shapes, dtypes, finite values) before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpstack.errors import ModelError
from dpstack.policy.execution import RecedingHorizon

SUPPORTED_FORMAT = ("dpstack-onnx", 1)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"{path}: missing (listed in policy.json)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or truncated files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model (corrupt or truncated?): {first_line}") from None


def read_export_metadata(model_dir: str | Path) -> dict[str, Any]:
    """policy.json of a `dpstack export` directory, checked: present, valid JSON, a format this runtime reads."""
    meta_path = Path(model_dir) / "policy.json"
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: missing; is {model_dir} a directory written by `dpstack export`?")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{meta_path}: not valid JSON ({exc})") from None
    found = (
        meta.get("format") if isinstance(meta, dict) else None,
        meta.get("format_version") if isinstance(meta, dict) else None,
    )
    if found != SUPPORTED_FORMAT:
        raise ModelError(f"{meta_path}: format {found}, this runtime reads {SUPPORTED_FORMAT}")
    missing = [
        k
        for k in ("graphs", "observations", "state", "n_obs_steps", "actions_per_tick", "action", "task")
        if k not in meta
    ]
    if missing:
        raise ModelError(f"{meta_path}: missing entries {missing} (a truncated or hand-edited file?)")
    return meta


class OnnxPolicy:
    """An exported tick graph with its sampler state: `reset()`, `act(obs)`, and `tick(history)`.

    Args:
        model_dir: directory written by `dpstack export` (policy.json + .onnx files).
        threads: onnxruntime intra-op threads (1 is fastest for batch-1 control on a shared CPU).
        seed: seed of the noise generator (None: fresh entropy).
    """

    def __init__(self, model_dir: str | Path, threads: int = 1, seed: int | None = None) -> None:
        self.dir = Path(model_dir)
        self.meta = read_export_metadata(self.dir)
        graphs = self.meta["graphs"]
        self._tick = _session(self.dir / graphs["tick"]["file"], threads)
        self._start = _session(self.dir / graphs["start"]["file"], threads) if "start" in graphs else None
        self.observations = {o["key"]: o for o in self.meta["observations"]}
        self.state_names = [s["name"] for s in self.meta["state"]]
        self.n_obs_steps = int(self.meta["n_obs_steps"])
        self.actions_per_tick = int(self.meta["actions_per_tick"])
        self.action_low = np.asarray(self.meta["action"]["low"], np.float32)
        self.action_high = np.asarray(self.meta["action"]["high"], np.float32)
        self.network_evaluations = 0
        self.rng = np.random.default_rng(seed)
        self.state: dict[str, np.ndarray] | None = None
        self._runner = RecedingHorizon(self.tick, self.n_obs_steps, self.actions_per_tick)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: forget the observation history, queued actions and sampler state."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state = None
        self._runner.reset()

    @property
    def has_start(self) -> bool:
        """Whether the sampler has a separate first-tick graph (stateful samplers)."""
        return self._start is not None

    def check_history(self, history: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate {key: (B, n_obs_steps, *shape)} against policy.json; returns the arrays in its dtypes."""
        missing = sorted(set(self.observations) - set(history))
        if missing:
            raise ModelError(
                f"{self.dir / 'policy.json'}: observation is missing key(s) {missing}; the model takes "
                f"{sorted(self.observations)}"
            )
        out, batch = {}, None
        for key, spec in self.observations.items():
            value = np.asarray(history[key])
            expected = (self.n_obs_steps, *spec["shape"])
            if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
                raise ModelError(
                    f"{self.dir / 'policy.json'}: observation '{key}' has shape {tuple(value.shape)}, the model "
                    f"expects (batch, {', '.join(map(str, expected))}) ({spec['dtype']})"
                )
            if batch is not None and value.shape[0] != batch:
                raise ModelError(f"observation '{key}' has batch {value.shape[0]}, other keys have {batch}")
            batch = value.shape[0]
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ModelError(f"observation '{key}' contains NaN or inf")
            out[key] = value.astype(spec["dtype"], copy=False)
        return out

    def noise_shape(self, batch: int, start: bool) -> tuple[int, ...]:
        spec = next(i for i in self.meta["graphs"]["start" if start else "tick"]["inputs"] if i["name"] == "noise")
        return tuple(batch if d == "batch" else int(d) for d in spec["shape"])

    def tick(self, history: Mapping[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """One sampler tick: history {key: (B, To, ...)} -> raw actions (B, A, Da) from the current step."""
        obs = self.check_history(history)
        batch = next(iter(obs.values())).shape[0]
        start = self.state is None and self.has_start
        session = self._start if start else self._tick
        shape = self.noise_shape(batch, start)
        if noise is None:
            noise = self.rng.standard_normal(shape, dtype=np.float32)
        elif noise.shape != shape:
            raise ModelError(f"noise must have shape {shape}, got {noise.shape}")
        feeds = {**obs, "noise": noise.astype(np.float32, copy=False)}
        if not start and self.state is not None:
            if next(iter(self.state.values())).shape[0] != batch:
                raise ModelError(f"batch changed within an episode ({batch} vs the state's); call reset()")
            feeds.update(self.state)
        outputs = session.run(None, feeds)
        self.network_evaluations += self.meta["graphs"]["start" if start else "tick"]["network_evaluations"]
        if self.state_names:
            self.state = dict(zip(self.state_names, outputs[1:], strict=True))
        return outputs[0]

    __call__ = tick  # a chunk source for RecedingHorizon (e.g. the evaluator's), reset by `reset()`

    # ------------------------------------------------------------------ acting
    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One control tick: the current observation {key: (*shape) or (B, *shape)} -> action (Da,) or (B, Da).

        Call `reset()` at the start of every episode.
        """
        single = all(np.ndim(obs[k]) == len(self.observations[k]["shape"]) for k in self.observations if k in obs)
        batched = {k: np.asarray(v)[None] if single else np.asarray(v) for k, v in obs.items()}
        action = self._runner.select_action(batched)
        return action[0] if single else action
