"""The export's spellings of Mish, GroupNorm and Conv1d: equal to PyTorch's, and what the exported graphs contain."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from dpstack.methods import load_policy
from dpstack.policy.export import weights_sha256
from dpstack.policy.onnx_ops import OnnxConv1d, OnnxGroupNorm, OnnxMish, for_onnx


def test_mish_with_one_exponential_equals_torch_mish_over_the_float32_range() -> None:
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([-1e30, -1e4, 19.99, 20.0, 20.01, 88.0, 1e4, 3e38])])
    expected, got = nn.Mish()(x), OnnxMish()(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("shape", [(3, 8), (3, 8, 5), (2, 8, 4, 3), (1, 8, 16)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_on_constant_shapes_equals_torch_group_norm(shape: tuple[int, ...], affine: bool) -> None:
    torch.manual_seed(0)
    reference = nn.GroupNorm(4, 8, affine=affine)
    if affine:
        nn.init.normal_(reference.weight)
        nn.init.normal_(reference.bias)
    replaced = for_onnx(nn.Sequential(reference))[0]
    assert isinstance(replaced, OnnxGroupNorm)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(replaced(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 5, "padding": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"kernel_size": 3, "dilation": 2, "groups": 2, "padding": "same"},
        {"kernel_size": 1},
    ],
)
def test_conv1d_as_a_height_one_conv2d_equals_torch_conv1d(kwargs: dict) -> None:
    torch.manual_seed(0)
    reference = nn.Conv1d(4, 6, **kwargs)
    replaced = for_onnx(nn.Sequential(reference))[0]
    assert isinstance(replaced, OnnxConv1d)
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(replaced(x), reference(x), rtol=1e-5, atol=1e-5)


def test_for_onnx_copies_and_keeps_parameter_names() -> None:
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3), nn.GroupNorm(2, 8), nn.Mish(), nn.Conv1d(8, 8, 3, padding_mode="circular")
    )
    copied = for_onnx(model)
    assert [type(m) for m in model] == [nn.Conv1d, nn.GroupNorm, nn.Mish, nn.Conv1d]  # the original is untouched
    assert [type(m) for m in copied] == [OnnxConv1d, OnnxGroupNorm, OnnxMish, nn.Conv1d]  # circular: kept
    assert list(copied.state_dict()) == list(model.state_dict())
    assert weights_sha256(copied) == weights_sha256(model)


def test_exported_graphs_have_no_softplus_or_runtime_shapes(trained: Path, exports: dict[str, Path]) -> None:
    for name, directory in exports.items():
        meta = json.loads((directory / "policy.json").read_text())
        assert meta["weights_sha256"] == weights_sha256(load_policy(trained))  # the checkpoint's, not the copy's
        graph = onnx.load(str(directory / "policy.onnx")).graph
        ops = {node.op_type for node in graph.node}
        assert "Conv" in ops and "InstanceNormalization" in ops, name
        assert not ops & {"Mish", "Softplus", "GroupNormalization"}, (name, ops)
        # every Reshape has a constant shape: PyTorch's GroupNorm spelling reshapes each normalization's output
        # back to Shape(its input), computed at run time
        constants = {i.name for i in graph.initializer} | {
            out for node in graph.node if node.op_type == "Constant" for out in node.output
        }
        reshapes = [node for node in graph.node if node.op_type == "Reshape"]
        assert reshapes and all(node.input[1] in constants for node in reshapes), name
