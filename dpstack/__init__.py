"""dpstack: Diffusion Policy, Diffuser planners and DPPO, from zarr episode stores to a ROS 2 node.

Everything installs under this one namespace; the repository's folders map onto it (pyproject.toml)
and the layers below may only import downwards (import-linter contracts, checked by `make test`):

  dpstack.cli, dpstack.commands     dpstack/cli.py, dpstack/commands/   the command line
  dpstack.ros                       ros/        ROS 2 policy node (torch-free) and simulator bridge
  dpstack.methods, dpstack.train    dpstack/    the method registry, checkpoint loading, the trainer
  dpstack.planners                  planners/   Diffuser-style trajectory planners
  dpstack.policy                    policy/     denoisers, schedules, samplers, Diffusion Policy, export,
                                                evaluation and the torch-free runtime
  dpstack.envs                      envs/       simulators, experts, demonstration collection
  dpstack.data                      dpstack/data/  zarr episode stores, training windows, importers
  core                              dpstack/    errors, features, tasks (specs as data), config, version
  dpstack.configs                   configs/    the YAML configs (package data)
"""

import os
import time

from dpstack.version import __version__

__all__ = ["__version__"]


def _runnable_elsewhere(samples: int = 5) -> int | None:
    """Tasks running now besides this one: the fewest over a few reads of /proc/loadavg, 2 ms apart (a
    blip is not load). None where the kernel does not say (not Linux)."""
    counts = []
    try:
        for i in range(samples):
            with open("/proc/loadavg") as loadavg:
                counts.append(int(loadavg.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(0.002)
    except (OSError, ValueError, IndexError):
        return None
    return max(0, min(counts))


def _omp_wait_policy() -> str:
    """OpenMP's wait policy for this process, from what it can know before torch loads OpenMP.

    Spinning (ACTIVE) workers make a 2-thread U-Net training step 2-5x faster than PASSIVE ones on an
    idle machine; next to other busy processes they make it about 2x slower (benchmarks/threads.py).
    So: PASSIVE when several ranks share this node (torchrun) or other tasks are running right now,
    ACTIVE otherwise. "Right now" is the kernel's count of running tasks, not the 1-minute load average,
    which stays high for a minute after a job ends and would make the next run on an idle machine slow.
    """
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get("OMP_NUM_THREADS", cores))
    elsewhere = _runnable_elsewhere()
    if elsewhere is None:  # no /proc: fall back on the load average
        busy = os.getloadavg()[0] >= max(0.5, 0.25 * cores) if hasattr(os, "getloadavg") else True
    else:
        busy = elsewhere + threads > cores
    return "PASSIVE" if ranks_here > 1 or busy else "ACTIVE"


# This must be set before torch loads OpenMP, hence here; an explicit OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in os.environ:  # only then is it worth reading the kernel's task count
    os.environ["OMP_WAIT_POLICY"] = _omp_wait_policy()
