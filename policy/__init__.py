"""The learning core (`dpstack.policy`): normalization, denoisers, noise schedules, samplers, Diffusion
Policy, the evaluator, ONNX export and the torch-free runtime.

This package's own import is empty on purpose: `dpstack.policy.runtime` and `dpstack.policy.execution`
must load on a robot without PyTorch (see the import-linter contracts in pyproject.toml).
"""
