"""Receding-horizon execution: history padding, one chunk per n_action_steps ticks, no input mutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpstack.features import Feature
from dpstack.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from dpstack.policy.execution import ObservationHistory, RecedingHorizon, resolve_latency_steps
from dpstack.policy.normalizer import Normalizer


def test_queue_and_history() -> None:
    seen = []

    def predict(history):
        seen.append({k: v.copy() for k, v in history.items()})
        step = history["x"][:, -1, 0]
        return np.stack([np.stack([step * 10 + i] * 2, axis=-1) for i in range(4)], axis=1)  # (B, 4, 2)

    runner = RecedingHorizon(predict, n_obs_steps=2, actions_per_tick=3)
    actions = []
    for t in range(7):
        obs = {"x": np.full((1, 1), float(t))}
        actions.append(runner.select_action(obs)[0, 0])
        assert obs["x"][0, 0] == t  # caller's data untouched
    assert len(seen) == 3  # ticks 0, 3, 6
    np.testing.assert_array_equal(seen[0]["x"][0, :, 0], [0, 0])  # first observation repeated
    np.testing.assert_array_equal(seen[1]["x"][0, :, 0], [2, 3])
    assert actions == [0, 1, 2, 30, 31, 32, 60]
    runner.reset()
    runner.select_action({"x": np.full((1, 1), 9.0)})
    np.testing.assert_array_equal(seen[-1]["x"][0, :, 0], [9, 9])


@pytest.mark.parametrize(
    "bad",
    [
        {"x": np.zeros((1, 3))},  # shape changed
        {"x": np.zeros((2, 2))},  # batch changed
        {"y": np.zeros((1, 2))},  # key renamed
        {"x": np.zeros((1, 2)), "y": np.zeros((1, 2))},  # key added
    ],
)
def test_history_refuses_changed_keys_or_shapes_and_keeps_what_it_held(bad: dict) -> None:
    history = ObservationHistory(2)
    history.observe({"x": np.array([[1.0, 2.0]])})
    history.observe({"x": np.array([[3.0, 4.0]])})
    with pytest.raises(ValueError, match="observation keys or shapes changed within an episode"):
        history.observe(bad)
    np.testing.assert_array_equal(history.stacked()["x"], [[[1.0, 2.0], [3.0, 4.0]]])


def test_unbatched_history_of_one_env() -> None:
    # a rollout worker's history: observations without a batch axis, histories (n_obs_steps, ...)
    history = ObservationHistory(3, batched=False)
    history.observe({"x": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(history.buffers()["x"], [[1.0, 2.0]] * 3)  # the first one repeated
    history.observe({"x": np.array([3.0, 4.0])})
    history.observe({"x": np.array([5.0, 6.0])})
    history.observe({"x": np.array([7.0, 8.0])})
    np.testing.assert_array_equal(history.stacked()["x"], [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    with pytest.raises(ValueError, match=r"got \{'x': \(1, 2\)\}, the history holds \{'x': \(2,\)\}"):
        history.observe({"x": np.array([[9.0, 9.0]])})
    np.testing.assert_array_equal(history.stacked()["x"][-1], [7.0, 8.0])
    for batched in (True, False):  # a one-step history keeps the newest observation only
        one = ObservationHistory(1, batched=batched)
        for value in ([1.0, 2.0], [3.0, 4.0]):
            one.observe({"x": np.array([value] if batched else value)})
        np.testing.assert_array_equal(one.stacked()["x"], [[[3.0, 4.0]]] if batched else [[3.0, 4.0]])


def test_history_follows_keys_not_their_order() -> None:
    # the history keeps per-key views into its buffers: an observation whose keys come in another order
    # must still land in each key's own buffer
    history = ObservationHistory(2, batched=False)
    history.observe({"a": np.array([1.0]), "b": np.array([10.0])})
    history.observe({"b": np.array([20.0]), "a": np.array([2.0])})
    history.clear()  # a new episode: new buffers, new views
    history.observe({"b": np.array([30.0]), "a": np.array([3.0])})
    history.observe({"a": np.array([4.0]), "b": np.array([40.0])})
    np.testing.assert_array_equal(history.stacked()["a"], [[3.0], [4.0]])
    np.testing.assert_array_equal(history.stacked()["b"], [[30.0], [40.0]])


def test_policy_select_action_uses_the_shared_runner() -> None:
    features = {"state": Feature((3,))}
    normalizer = Normalizer(
        {"state": ("minmax", torch.ones(3), torch.zeros(3)), "action": ("minmax", torch.ones(2), torch.zeros(2))}
    )
    policy = DiffusionPolicy(
        PolicyConfig(denoiser="mlp", preset="tiny", sampler="ddim", num_inference_steps=2, n_action_steps=4),
        features,
        Feature((2,)),
        normalizer,
    ).eval()
    calls = []
    original = policy.sample_tick
    policy.sample_tick = lambda *a, **k: calls.append(1) or original(*a, **k)
    policy.reset()
    obs = {"state": torch.zeros(2, 3)}
    actions = [policy.select_action(obs) for _ in range(9)]
    assert all(a.shape == (2, 2) for a in actions) and len(calls) == 3
    assert torch.equal(obs["state"], torch.zeros(2, 3))


def test_latency_aware_execution_drops_stale_actions_and_never_runs_dry() -> None:
    """A chunk computed at tick tau holds, at index i, the action meant for tick tau + i."""
    requested_at = []

    def predict(history):
        tau = history["t"][:, -1, 0]
        requested_at.append(int(tau[0]))
        return np.stack([np.stack([tau + i], axis=-1) for i in range(10)], axis=1)  # (B, 10, 1)

    runner = RecedingHorizon(predict, n_obs_steps=2, actions_per_tick=4, latency_steps=2)
    executed = [float(runner.select_action({"t": np.full((1, 1), float(t))})[0, 0]) for t in range(14)]
    assert executed == list(range(14))  # every tick gets the action meant for it
    assert requested_at == [0, 2, 6, 10]  # requested while 2 actions were still queued
    with pytest.raises(ValueError, match=r"latency_steps=4 does not fit sampler x: .* must be in \[0, 3\]"):
        resolve_latency_steps(4, actions_per_tick=4, predicted=10, what="sampler x")
    with pytest.raises(ValueError, match=r"must be in \[0, 2\]"):
        resolve_latency_steps(3, actions_per_tick=4, predicted=6, what="sampler x")
    # -1 (auto): one tick ahead when the chunk holds it, else none
    assert [resolve_latency_steps(-1, 4, 10, "x"), resolve_latency_steps(-1, 4, 4, "x")] == [1, 0]
    assert [resolve_latency_steps(-1, 1, 8, "x"), resolve_latency_steps(2, 4, 6, "x")] == [0, 2]
    short = RecedingHorizon(lambda h: np.zeros((1, 5, 1)), 2, actions_per_tick=4, latency_steps=2)
    short.select_action({"t": np.zeros((1, 1))})
    short.select_action({"t": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"A >= 6 \(latency 2 \+ 4 actions per tick\)"):
        short.select_action({"t": np.zeros((1, 1))})
