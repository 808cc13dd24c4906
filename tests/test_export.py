"""ONNX export and the PyTorch-free runtime: parity per sampler, torch-free import, clear errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpstack.errors import ConfigError, ModelError
from dpstack.methods import load_policy
from dpstack.policy.export import export_policy, parity_check, quantize_export
from dpstack.policy.runtime import OnnxPolicy
from tests.conftest import EXPORT_SAMPLERS as SAMPLERS
from tests.conftest import MAZE


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_export_matches_pytorch_over_an_episode_of_ticks(name: str, trained: Path, exports: dict[str, Path]) -> None:
    policy = load_policy(trained)
    sampler = policy.make_sampler(SAMPLERS[name])
    worst = parity_check(policy, sampler, exports[name], ticks=12, batch=3)
    assert worst["normalized"] <= 1e-4, worst
    meta = json.loads((exports[name] / "policy.json").read_text())
    assert [o["key"] for o in meta["observations"]] == sorted(policy.obs_features)
    assert meta["sampler"]["name"] == sampler.name and meta["actions_per_tick"] == policy.actions_per_tick(sampler)
    assert meta["n_obs_steps"] == 2 and len(meta["weights_sha256"]) == 64 and meta["opset"] >= 17
    assert bool(meta["state"]) == sampler.stateful
    assert (exports[name] / "denoiser.onnx").is_file() and (exports[name] / "condition.onnx").is_file()


def test_int8_export_is_kept_within_its_bound_and_refused_above_it(trained: Path, tmp_path: Path) -> None:
    import onnx

    policy = load_policy(trained)
    sampler = policy.make_sampler(SAMPLERS["streaming"])  # stateful: both tick graphs are quantized
    out = tmp_path / "int8"
    exporter_log, notes = logging.getLogger("torch.onnx._internal.exporter._registration"), []
    recorder = logging.Handler()
    recorder.emit = notes.append  # type: ignore[method-assign]
    exporter_log.addHandler(recorder)
    try:
        export_policy(policy, sampler, out, [-1, -1], [1, 1], 100.0, {"name": MAZE.name})
    finally:
        exporter_log.removeHandler(recorder)
    assert not [n.getMessage() for n in notes if "torchvision" in n.getMessage()]  # notes on ops dpstack never uses
    fp32 = {f: (out / f).read_bytes() for f in ("policy.onnx", "policy_start.onnx", "denoiser.onnx")}
    with pytest.raises(ConfigError, match=r"differs from PyTorch by \S+ .* above quantize_bound=1e-12; refused"):
        quantize_export(policy, sampler, out, bound=1e-12)
    assert {f: (out / f).read_bytes() for f in fp32} == fp32  # the fp32 export is left as it was
    assert not (out / ".int8").exists() and "quantization" not in json.loads((out / "policy.json").read_text())

    worst = quantize_export(policy, sampler, out, bound=0.05)
    meta = json.loads((out / "policy.json").read_text())
    assert meta["quantization"]["graphs"] == ["policy.onnx", "policy_start.onnx"]
    assert 0 < worst["normalized"] == meta["quantization"]["parity_normalized"] <= 0.05
    ops = {node.op_type for node in onnx.load(out / "policy.onnx").graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops, sorted(ops)
    weights = {t.data_type for t in onnx.load(out / "policy.onnx").graph.initializer if t.name.endswith("_quantized")}
    assert weights == {onnx.TensorProto.UINT8}  # u8u8 kernels: int8 weights saturate on x86 CPUs without VNNI
    assert (out / "denoiser.onnx").read_bytes() == fp32["denoiser.onnx"]  # not covered by the parity check: fp32
    assert parity_check(policy, sampler, out)["normalized"] == pytest.approx(worst["normalized"])
    runtime = OnnxPolicy(out, seed=0)  # the runtime runs it like any export
    action = runtime.act({"state": np.zeros(4, np.float32), "goal": np.ones(2, np.float32)})
    assert action.shape == (2,) and np.isfinite(action).all()


def test_export_command_refuses_unknown_quantization_and_unchecked_int8(trained: Path, tmp_path: Path) -> None:
    from dpstack.commands.export import Config, run

    with pytest.raises(ConfigError, match="quantize must be int8 or null, got 'fp8'"):
        run(Config(checkpoint=str(trained), out=str(tmp_path / "a"), quantize="fp8"))
    with pytest.raises(ConfigError, match="set check_ticks >= 1"):
        run(Config(checkpoint=str(trained), out=str(tmp_path / "b"), quantize="int8", check_ticks=0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_runtime_acts_without_torch(exports: dict[str, Path]) -> None:
    """Importing torch is made to fail; the runtime still loads the export and acts for an episode."""
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from dpstack.policy.runtime import OnnxPolicy
policy = OnnxPolicy({str(exports["streaming"])!r}, seed=0)
policy.reset()
obs = {{"state": np.zeros(4, np.float32), "goal": np.ones(2, np.float32)}}
actions = [policy.act(obs) for _ in range(7)]
assert all(a.shape == (2,) and np.isfinite(a).all() for a in actions)
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok", policy.network_evaluations)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(3 + 1)]  # first tick 3 calls, then 1 call per 3-action chunk


def test_runtime_rejects_mismatched_observations(exports: dict[str, Path]) -> None:
    policy = OnnxPolicy(exports["ddim"])
    good = {"state": np.zeros((1, 2, 4), np.float32), "goal": np.zeros((1, 2, 2), np.float32)}
    assert policy.tick(good).shape[0] == 1
    with pytest.raises(ModelError, match=r"missing key\(s\) \['goal'\]"):
        policy.tick({"state": good["state"]})
    with pytest.raises(ModelError, match=r"'state' has shape \(1, 2, 5\), the model expects \(batch, 2, 4\)"):
        policy.tick({**good, "state": np.zeros((1, 2, 5), np.float32)})
    with pytest.raises(ModelError, match="NaN"):
        policy.tick({**good, "goal": np.full((1, 2, 2), np.nan, np.float32)})


def test_truncated_or_missing_files_are_clear_errors(exports: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in exports["ddim"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    data = (broken / "policy.onnx").read_bytes()
    (broken / "policy.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"policy\.onnx: not a loadable ONNX model"):
        OnnxPolicy(broken)
    (broken / "policy.json").write_text("{")
    with pytest.raises(ModelError, match=r"policy\.json: not valid JSON"):
        OnnxPolicy(broken)
    with pytest.raises(ModelError, match=r"policy\.json: missing"):
        OnnxPolicy(tmp_path / "nowhere")


def test_eval_through_the_runtime(exports: dict[str, Path], tmp_path: Path) -> None:
    from dpstack.policy.evaluate import EvalSpec, evaluate_exported

    record = evaluate_exported(
        exports["rti"], EvalSpec(MAZE, episodes=2, seed=100000, out_dir=tmp_path / "eval", videos=0)
    )
    assert record["backend"] == "onnx" and record["episodes"] == 2 and record["sampler"] == "rti-1,0"
    # 2 calls per executed action, plus each episode's 3-call first tick
    assert 2 < record["nfe_per_action"] <= 2 + 1 / record["mean_steps"] + 1e-9
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["backend"] == "onnx"
