"""Diffusion Policy: episode data, normalization, denoisers, noise schedules, samplers and training."""

import dpstack  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported by any policy module)
