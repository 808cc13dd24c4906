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

from dpstack.version import __version__

__all__ = ["__version__"]


def _omp_wait_policy() -> str:
    """OpenMP's wait policy for this process, from what it can know before torch loads OpenMP.

    Spinning (ACTIVE) workers are about a third faster for a training step on an idle machine; on a
    machine shared with other busy processes they turn it into a crawl (a 2-thread U-Net step next to two
    other jobs: 8.0 s spinning vs 0.26 s passive; benchmarks/threads.py). So: PASSIVE when several ranks
    share this node (torchrun) or the 1-minute load average says other work is running, ACTIVE otherwise.
    """
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] >= max(0.5, 0.25 * cores) if hasattr(os, "getloadavg") else True
    return "PASSIVE" if ranks_here > 1 or busy else "ACTIVE"


# This must be set before torch loads OpenMP, hence here; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", _omp_wait_policy())
