"""Reinforcement learning on the rollout harness: the PPO math (`losses.py`), the Gaussian MLP policy
(`gaussian.py`) and Gaussian PPO read top to bottom (`ppo.py`). DPPO builds on the same math."""
