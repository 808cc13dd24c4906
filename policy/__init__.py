"""Diffusion Policy: episode data, normalization, denoisers, noise schedules, samplers and training."""
