"""The `dpstack` command line: `dpstack <command> [positional ...] [key=value ...]`.

Each command is one module in `dpstack/commands/` with a `Config` dataclass (the schema, one help
string per field), a `run(cfg)` function and the name of its YAML file in `configs/`. Modules are
imported only when their command runs, so `dpstack --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dpstack.errors import UserError
from dpstack.version import __version__


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    module: str
    summary: str


COMMANDS = [
    Command(("collect",), "dpstack.commands.collect", "run a task's expert and store its demonstrations"),
    Command(("train",), "dpstack.commands.train", "train a Diffusion Policy or a Diffuser planner on an episode store"),
    Command(("distill",), "dpstack.commands.distill", "distill a Diffusion Policy into a one-call consistency policy"),
    Command(("eval",), "dpstack.commands.eval", "evaluate a trained policy in closed loop (eval.json, videos)"),
    Command(("rl", "train"), "dpstack.commands.rl_train", "train a Gaussian policy with PPO in simulation (an expert)"),
    Command(("finetune",), "dpstack.commands.finetune", "fine-tune a Diffusion Policy in simulation with DPPO (RL)"),
    Command(("plan",), "dpstack.commands.plan", "plan a trajectory with a Diffuser checkpoint and render it (PNG)"),
    Command(("export",), "dpstack.commands.export", "export a policy + sampler to ONNX (policy.onnx, policy.json)"),
    Command(
        ("rti", "calibrate"),
        "dpstack.commands.rti_calibrate",
        "pick the RTI warm-start timestep offline from a dataset",
    ),
    Command(("ros", "policy"), "dpstack.commands.ros_policy", "run an exported policy as a ROS 2 lifecycle node"),
    Command(("ros", "sim"), "dpstack.commands.ros_sim", "run a task as a ROS 2 robot (simulator bridge)"),
    Command(("ros", "loop"), "dpstack.commands.ros_loop", "closed-loop episodes: policy node + bridge over ROS 2"),
    Command(("dataset", "info"), "dpstack.commands.dataset_info", "print a JSON summary of an episode store"),
    Command(
        ("dataset", "import", "robomimic"),
        "dpstack.commands.dataset_import_robomimic",
        "import a robomimic HDF5 file into a new episode store",
    ),
]


# Packages of the install profiles (pyproject.toml): a command that needs one the install lacks says which
# profile brings it instead of ending in a traceback.
_RUNTIME_PACKAGES = {"onnxruntime", "rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "lifecycle_msgs"}
_FULL_PACKAGES = {
    "torch", "zarr", "gymnasium", "gymnasium_robotics", "gym_pusht", "mujoco", "robosuite", "safetensors",
    "onnx", "onnxscript", "h5py", "tqdm", "imageio", "matplotlib", "tensorboard",
}  # fmt: skip


def _missing_dependency(exc: ModuleNotFoundError, command: Command) -> str | None:
    """One line for a command whose dependency this install lacks, or None for any other import error."""
    name = (exc.name or "").split(".")[0]
    if name == "torch":
        return (
            f"'dpstack {' '.join(command.words)}' needs PyTorch, which this install lacks: install torch, then "
            "dpstack[full] (see the README's Install section)"
        )
    for profile, packages in (("runtime", _RUNTIME_PACKAGES), ("full", _FULL_PACKAGES)):
        if name in packages:
            return (
                f"'dpstack {' '.join(command.words)}' needs {name}, which this install lacks: "
                f"pip install 'dpstack[{profile}]' (see the README's Install section)"
            )
    return None


def _usage(prefix: tuple[str, ...] = ()) -> str:
    matching = [c for c in COMMANDS if c.words[: len(prefix)] == prefix]
    width = max(len(" ".join(c.words)) for c in matching)
    lines = [
        f"usage: dpstack {' '.join(prefix) + ' ' if prefix else ''}<command> [args] [key=value ...]",
        "",
        "commands:",
        *(f"  {' '.join(c.words):<{width}}  {c.summary}" for c in matching),
        "",
        "Every command takes key=value overrides and --help (e.g. `dpstack dataset info --help`).",
    ]
    return "\n".join(lines)


def _find(argv: Sequence[str]) -> tuple[Command | None, tuple[str, ...], list[str]]:
    """Longest command whose words prefix argv; also the words matched so far and the rest of argv."""
    best: Command | None = None
    for command in COMMANDS:
        n = len(command.words)
        if tuple(argv[:n]) == command.words and (best is None or n > len(best.words)):
            best = command
    if best is not None:
        return best, best.words, list(argv[len(best.words) :])
    prefix: tuple[str, ...] = ()
    for word in argv:
        if any(c.words[: len(prefix) + 1] == (*prefix, word) for c in COMMANDS):
            prefix = (*prefix, word)
        else:
            break
    return None, prefix, list(argv[len(prefix) :])


def _help(command: Command, module) -> str:
    from dpstack.config import CONFIG_DIR, describe

    positional = getattr(module, "POSITIONAL", ())
    rows = describe(module.CONFIG_NAME, module.Config)
    width = max(len(key) for key, _, _ in rows)
    lines = [
        f"usage: dpstack {' '.join(command.words)} " + "".join(f"<{p}> " for p in positional) + "[key=value ...]",
        "",
        (module.__doc__ or command.summary).strip(),
        "",
        f"keys (defaults from {CONFIG_DIR / (module.CONFIG_NAME + '.yaml')}):",
    ]
    for key, default, text in rows:
        lines.append(f"  {key:<{width}} = {default}")
        if text:
            lines.append(f"  {'':<{width}}   {text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(code)
    return code


def _exit_without_finalizing(code: int) -> None:
    """End a torchrun rank whose command returned: flush, then exit without interpreter finalization.

    PyTorch's gloo teardown at interpreter exit, after `destroy_process_group`, sometimes aborts the
    process (std::terminate; 4 of ~70 two-rank DPPO runs on a loaded 2-core machine, no Python frame left on
    the stack; 0 of 48 with this exit), and torchrun then reports the whole job as failed although every
    checkpoint, log and collective was done. Nothing is left for finalization to do by then.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(f"dpstack {__version__}")
        return 0
    command, prefix, rest = _find(argv)
    wants_help = any(a in ("-h", "--help") for a in rest) or not argv
    if command is None:
        print(_usage(prefix), file=sys.stdout if wants_help or not rest else sys.stderr)
        if wants_help or not rest:
            return 0
        print(f"\nerror: unknown command 'dpstack {' '.join(argv[: len(prefix) + 1])}'", file=sys.stderr)
        return 2
    try:
        return _run(command, rest, wants_help)
    except ModuleNotFoundError as exc:
        message = _missing_dependency(exc, command)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _run(command: Command, rest: list[str], wants_help: bool) -> int:
    """`dpstack <command> [args]` (or its --help): parse, validate and run the command's module."""
    module = importlib.import_module(command.module)
    if wants_help:
        print(_help(command, module))
        return 0
    from dpstack.config import quote_value

    positional_names = list(getattr(module, "POSITIONAL", ()))
    overrides: list[str] = []
    for arg in rest:
        if "=" in arg and not arg.startswith(("/", ".")):
            overrides.append(arg)
        elif positional_names:
            overrides.append(f"{positional_names.pop(0)}={quote_value(arg)}")
        else:
            print(
                f"error: unexpected argument {arg!r} for 'dpstack {' '.join(command.words)}' "
                "(expected key=value; see --help)",
                file=sys.stderr,
            )
            return 2
    try:
        from dpstack.config import load_config

        cfg = load_config(module.CONFIG_NAME, module.Config, overrides, command="dpstack " + " ".join(command.words))
        log = None
        if getattr(module, "LOGS_COMMANDS", False):
            from dpstack.rundir import CommandLog

            log = CommandLog(str(getattr(cfg, "out", "") or ""), ["dpstack", *command.words, *rest])
        how = "error"
        try:
            result = module.run(cfg)
            how = "ok"
        except KeyboardInterrupt:
            how = "interrupted"
            raise
        finally:
            if log is not None:
                log.end(how)
    except UserError as exc:
        if os.environ.get("DPSTACK_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
