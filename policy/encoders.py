"""Observation encoders, composed per key from a task's features (state, image, several cameras).

`ObservationEncoder` maps normalized observations ``{key: (B, To, *shape)}`` to one conditioning
vector ``(B, To * F)``: state keys pass through (concatenated), each camera key goes through its own
ResNet-18-style CNN (GroupNorm instead of BatchNorm, spatial-softmax keypoints, as in Diffusion
Policy) with random-crop augmentation in training and a centre crop at inference.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dpstack.features import Feature


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(cout // 16, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(cout // 16, cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // 16, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> expected (x, y) of each of `num_kp` learned keypoints: (B, 2 num_kp)."""

    def __init__(self, channels: int, num_kp: int = 32) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, num_kp, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        attention = self.project(x).flatten(2).softmax(-1)  # (B, K, HW)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device), indexing="ij"
        )
        grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # (HW, 2)
        return (attention @ grid).reshape(b, -1)


class ImageEncoder(nn.Module):
    """ResNet-18 layout (widths 64-512) with GroupNorm and spatial softmax; (B, 3, H, W) in [-1, 1] -> (B, out)."""

    def __init__(self, crop: tuple[int, int], num_kp: int = 32, out_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.crop = crop
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.GroupNorm(width // 16, width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks = []
        for i, w in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            blocks += [_BasicBlock(cin, w, 1 if i == 0 else 2), _BasicBlock(w, w, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = SpatialSoftmax(widths[-1], num_kp)
        self.out = nn.Linear(2 * num_kp, out_dim)
        self.out_dim = out_dim

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = self.crop
        if (ch, cw) == (h, w):
            return x
        if self.training:  # one random crop per image (Diffusion Policy's augmentation)
            tops = torch.randint(0, h - ch + 1, (x.shape[0],), device=x.device)
            lefts = torch.randint(0, w - cw + 1, (x.shape[0],), device=x.device)
            rows = tops[:, None] + torch.arange(ch, device=x.device)
            cols = lefts[:, None] + torch.arange(cw, device=x.device)
            index = torch.arange(x.shape[0], device=x.device)[:, None, None]
            return x.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top : top + ch, left : left + cw]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.blocks(self.stem(self._crop(x)))))


class ObservationEncoder(nn.Module):
    """Normalized obs {key: (B, To, *shape)} -> conditioning (B, To * feature_dim), keys in sorted order."""

    def __init__(
        self, features: Mapping[str, Feature], n_obs_steps: int, crop_fraction: float = 0.9, image_feature_dim: int = 64
    ) -> None:
        super().__init__()
        self.keys = sorted(features)
        self.n_obs_steps = n_obs_steps
        self.image_keys = [k for k in self.keys if features[k].normalize == "image"]
        self.cameras = nn.ModuleDict()
        for key in self.image_keys:
            h, w, _ = features[key].shape
            self.cameras[key] = ImageEncoder(
                (int(h * crop_fraction), int(w * crop_fraction)), out_dim=image_feature_dim
            )
        state_dim = sum(int(torch.tensor(features[k].shape).prod()) for k in self.keys if k not in self.image_keys)
        self.step_dim = state_dim + image_feature_dim * len(self.image_keys)
        self.output_dim = self.step_dim * n_obs_steps

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for key in self.keys:
            value = obs[key]
            batch, steps = value.shape[:2]
            if steps != self.n_obs_steps:
                raise ValueError(f"observation '{key}' has {steps} steps, expected n_obs_steps={self.n_obs_steps}")
            if key in self.cameras:  # (B, To, H, W, 3) channels-last as stored -> (B*To, 3, H, W)
                images = value.reshape(batch * steps, *value.shape[2:]).permute(0, 3, 1, 2)
                parts.append(self.cameras[key](images).reshape(batch, steps, -1))
            else:
                parts.append(value.reshape(batch, steps, -1))
        return torch.cat(parts, dim=-1).reshape(obs[self.keys[0]].shape[0], -1)
