"""Every denoiser honours the one interface: shapes, per-position timesteps, clear shape errors."""

from __future__ import annotations

import pytest
import torch

from dpstack.policy.denoisers import DENOISERS, mlp, transformer, unet1d

TINY = {
    "unet": unet1d.PRESETS["tiny"],
    "transformer": {**transformer.PRESETS["tiny"], "horizon": 16, "n_cond_tokens": 2},
    "mlp": {**mlp.PRESETS["tiny"], "horizon": 16},
}


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_interface_shapes_and_timestep_forms(name: str) -> None:
    torch.manual_seed(0)
    net = DENOISERS[name](action_dim=3, cond_dim=10, **TINY[name]).eval()
    x, cond = torch.randn(4, 16, 3), torch.randn(4, 10)
    per_sample = torch.randint(0, 100, (4,))
    out = net(x, per_sample, cond)
    assert out.shape == (4, 16, 3) and torch.isfinite(out).all()
    # (B,) timesteps mean the same level at every position
    assert torch.allclose(net(x, per_sample[:, None].expand(4, 16), cond), out, atol=1e-5)
    mixed = per_sample[:, None].expand(4, 16).clone()
    mixed[:, 8:] = 99
    assert not torch.allclose(net(x, mixed, cond), out, atol=1e-4)
    assert not torch.allclose(net(x, per_sample, torch.randn(4, 10)), out, atol=1e-4)  # conditioning matters


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_bad_shapes_are_named(name: str) -> None:
    net = DENOISERS[name](action_dim=3, cond_dim=10, **TINY[name])
    with pytest.raises(ValueError, match=r"timesteps must be \(4,\) or \(4, 16\)"):
        net(torch.randn(4, 16, 3), torch.zeros(4, 8, dtype=torch.long), torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"sample must be \(B, T, Da\)"):
        net(torch.randn(4, 48), torch.zeros(4, dtype=torch.long), torch.randn(4, 10))


def test_unet_presets_match_published_sizes() -> None:
    lowdim = unet1d.ConditionalUnet1D(2, 40, **unet1d.PRESETS["lowdim"])
    assert abs(sum(p.numel() for p in lowdim.parameters()) / 1e6 - 65.8) < 0.1  # Diffusion Policy's 65.8 M


def test_residual_mlp_has_dppos_layout_and_refuses_uneven_widths() -> None:
    torch.manual_seed(0)
    net = mlp.MLPDenoiser(3, 11, horizon=4, hidden=(32, 32, 32), residual=True)
    linears = [m for m in net.body.modules() if isinstance(m, torch.nn.Linear)]
    # in -> 32, one residual pair 32 -> 32 -> 32, 32 -> out: as many layers as the plain 3 x 32 MLP
    assert [(m.in_features, m.out_features) for m in linears] == [(4 * 19 + 11, 32), (32, 32), (32, 32), (32, 12)]
    block = net.body[1]
    h = torch.randn(5, 32)
    torch.testing.assert_close(block(h), h + block.body(h))
    assert net(torch.randn(5, 4, 3), torch.randint(0, 20, (5,)), torch.randn(5, 11)).shape == (5, 4, 3)
    with pytest.raises(ValueError, match="odd number of equal hidden sizes"):
        mlp.MLPDenoiser(3, 11, horizon=4, hidden=(32, 64, 32), residual=True)


def test_training_mish_equals_pytorchs_in_value_and_gradient() -> None:
    # the one-exp formulation used under autograd, across the range where exp over- and underflows
    from torch.nn import functional as F

    from dpstack.policy.denoisers.mish import Mish, _MishFunction

    x = torch.cat([torch.linspace(-120.0, 120.0, 4001), torch.tensor([0.0, -0.0, 1e-8, -1e-8])])
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = Mish()(ours)
    assert y.grad_fn is not None and "MishFunction" in type(y.grad_fn).__name__  # the faster path ran
    y.sum().backward()
    F.mish(theirs).sum().backward()
    torch.testing.assert_close(y, F.mish(x), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=2e-6, rtol=1e-5)
    assert torch.isfinite(y).all() and torch.isfinite(ours.grad).all()
    # the derivative itself, against finite differences in float64
    assert torch.autograd.gradcheck(_MishFunction.apply, (torch.randn(64, dtype=torch.float64, requires_grad=True),))
    with torch.no_grad():  # sampling and control: PyTorch's own kernel, bit for bit
        assert torch.equal(Mish()(x), F.mish(x))
