"""One namespace, task specs as data, and files written by dpstack 0.1.0 still loading.

The layer contracts themselves are checked by `lint-imports` (pyproject.toml), which `make test` runs;
the wheel and the install profiles by `make check-install` (.ci/check_install.sh).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpstack.data.store import EpisodeStore
from dpstack.envs.registry import TASKS, make_env, task_spec
from dpstack.errors import ConfigError
from dpstack.methods import load_policy
from dpstack.policy.runtime import OnnxPolicy
from dpstack.tasks import TaskConfig

REPO = Path(__file__).resolve().parent.parent
V0_1 = REPO / "tests" / "fixtures" / "v0_1"
SIMULATORS = ("gym_pusht", "pymunk", "gymnasium_robotics", "mujoco", "robosuite")
SUBPACKAGES = ("policy", "envs", "planners", "ros", "configs")  # installed as dpstack.<name> only


def test_no_file_imports_the_folders_as_top_level_names() -> None:
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in SUBPACKAGES]
    assert offenders == []


def test_task_specs_are_read_without_importing_a_simulator() -> None:
    script = (
        "import sys\n"
        "from dpstack.envs.registry import TASKS, task_spec\n"
        "specs = {name: task_spec(name) for name in TASKS}\n"
        "specs['lift-image'] = task_spec('lift', image=True)\n"
        f"loaded = [m for m in {SIMULATORS!r} if m in sys.modules]\n"
        "print(loaded, specs['lift-image'].features['agentview_image'].shape, specs['pusht'].control_hz)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "(84,", "84,", "3)", "10.0"]


@pytest.mark.parametrize("name", ["pusht", "pointmaze-umaze", "pointmaze-umaze-dense"])
def test_the_built_env_is_laid_out_from_its_spec(name: str) -> None:
    task = TaskConfig(name=name, max_steps=77)
    spec, env = task_spec(task), make_env(task)
    try:
        assert env.task_spec == spec and spec.max_steps == env.max_steps == 77
        assert env.features == spec.features and env.action_feature == spec.action_feature
        np.testing.assert_array_equal(env.action_space.low, spec.action_low)
        obs, _ = env.reset(seed=0)
        assert {k: (v.shape, v.dtype.name) for k, v in obs.items()} == {
            k: (f.shape, f.dtype) for k, f in spec.features.items()
        }
    finally:
        env.close()
    assert set(TASKS) >= {"pusht", "lift", "can", "pointmaze-large"}


def test_a_bad_env_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"bad env arguments .*'wind'"):
        task_spec(TaskConfig(name="pusht", env={"wind": 3}))
    with pytest.raises(ConfigError, match="unknown task 'pushy'"):
        task_spec("pushy")


# ---------------------------------------------------------------- files written by dpstack 0.1.0


def test_v0_1_store_opens_and_fits_its_task() -> None:
    store = EpisodeStore.open(V0_1 / "store.zarr")
    assert store.n_episodes == 3 and store.n_steps == 120
    assert store.mismatches(task_spec(TaskConfig(name="pointmaze-umaze", max_steps=40))) == []
    assert store.mismatches(task_spec("pusht"))  # and it does not fit another task


def test_v0_1_checkpoint_loads_and_acts_as_it_did() -> None:
    expected = json.loads((V0_1 / "expected.json").read_text())
    policy = load_policy(V0_1 / "checkpoint")
    sampler = policy.make_sampler({"name": "ddim", "num_inference_steps": 3})
    policy.reset(generator=torch.Generator().manual_seed(0), sampler=sampler)
    obs = {k: np.asarray([v], np.float32) for k, v in expected["observation"].items()}
    actions = [policy.select_action(obs).numpy()[0] for _ in expected["torch_ddim3_seed0"]]
    np.testing.assert_allclose(actions, expected["torch_ddim3_seed0"], atol=1e-6)


def test_v0_1_export_runs_in_the_runtime_as_it_did() -> None:
    expected = json.loads((V0_1 / "expected.json").read_text())
    runtime = OnnxPolicy(V0_1 / "export", seed=0)
    runtime.reset()
    obs = {k: np.asarray(v, np.float32) for k, v in expected["observation"].items()}
    actions = [runtime.act(obs) for _ in expected["onnx_seed0"]]
    np.testing.assert_allclose(actions, expected["onnx_seed0"], atol=1e-5)


LINT_IMPORTS = [str(Path(sys.executable).with_name("lint-imports")), str(REPO / "pyproject.toml")]


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain (not editable) install of the tree, the layout the contracts speak of; its lint passes."""
    layout = tmp_path_factory.mktemp("layout")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(layout), str(REPO)], check=True, capture_output=True, timeout=300)
    clean = subprocess.run(LINT_IMPORTS, cwd=layout, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout[-2000:]
    return layout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("policy/module.py", "from dpstack.planners import diffuser", "dpstack.policy is not allowed to import dpstack.planners"),
        ("envs/base.py", "from dpstack.policy import schedulers", "dpstack.envs is not allowed to import dpstack.policy"),
        ("ros/loop.py", "from dpstack.cli import main", "dpstack.ros is not allowed to import dpstack.cli"),
        ("policy/runtime.py", "import torch", "dpstack.policy.runtime is not allowed to import torch"),
        ("policy/schedulers.py", "from dpstack.policy import samplers", "- .schedulers -> .samplers (1 import)"),
    ],
)  # fmt: skip
def test_lint_imports_fails_when_a_wrong_arrow_comes_back(
    module: str, line: str, broken: str, installed_layout: Path, tmp_path: Path
) -> None:
    """The contracts in pyproject.toml, run on a copy of the installed tree with one bad import added."""
    layout = tmp_path / "layout"
    shutil.copytree(installed_layout, layout)
    target = layout / "dpstack" / module
    target.write_text(target.read_text() + f"\n{line}  # reintroduced by the test\n")
    result = subprocess.run(LINT_IMPORTS, cwd=layout, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and broken in result.stdout, result.stdout[-2000:]


def test_every_package_folder_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages by hand (package-dir mapping): a new folder must be listed too,
    and so must a config group folder (YAML only, no __init__.py), or the wheel ships without it."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {v: k for k, v in config["package-dir"].items()}  # folder -> package name
    found = set()
    for marker in [*REPO.glob("*/**/__init__.py"), *REPO.glob("configs/**/*.yaml")]:
        relative = marker.parent.relative_to(REPO)
        top = relative.parts[0]
        if top in folders:
            found.add(".".join([folders[top], *relative.parts[1:]]))
    assert found - set(config["packages"]) == set()
