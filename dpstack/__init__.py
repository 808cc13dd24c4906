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

# OpenMP threads that spin while waiting turn a shared 2-core machine into a crawl: a 2-thread U-Net
# training step next to two other jobs takes 8.0 s spinning vs 0.26 s passive (benchmarks/threads.py).
# This must be set before torch loads OpenMP, hence here; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
