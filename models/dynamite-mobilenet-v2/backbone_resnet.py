"""ResNet as detectron2 builds it for DynaMITe: stride on the 3x3 conv, frozen batch norm everywhere.

Module names follow detectron2 (`stem.conv1`, `res2.0.conv1`, `.norm`, `.shortcut`), so a released checkpoint
maps one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .configuration_dynamite import BACKBONE_DEFAULTS, merge_backbone_config

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_DEFAULTS = BACKBONE_DEFAULTS["resnet"]


class DynamiteFrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (buffers), never updated, also in training."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: Tensor) -> Tensor:
        # Statistics and affine parameters are buffers: the gradient flows to `x` only, in training too.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class DynamiteConvNormReLU(nn.Conv2d):
    """A bias-free conv followed by its norm (`.norm`, as detectron2 names it) and an optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.norm = DynamiteFrozenBatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu_(x) if self.relu else x


class DynamiteBottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with a projection shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut = (
            DynamiteConvNormReLU(in_channels, out_channels, 1, stride, relu=False)
            if in_channels != out_channels
            else None
        )
        self.conv1 = DynamiteConvNormReLU(in_channels, bottleneck_channels, 1)
        self.conv2 = DynamiteConvNormReLU(bottleneck_channels, bottleneck_channels, 3, stride)
        self.conv3 = DynamiteConvNormReLU(bottleneck_channels, out_channels, 1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class DynamiteResNetStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = DynamiteConvNormReLU(3, 64, 7, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class DynamiteResNetBackbone(nn.Module):
    """ResNet-50/101/152 returning `res2..res5` (strides 4, 8, 16, 32)."""

    def __init__(self, depth: int = 50) -> None:
        super().__init__()
        self.stem = DynamiteResNetStem()
        in_channels, out_channels, bottleneck = 64, 256, 64
        self.stage_names = []
        for index, num_blocks in enumerate(_DEPTHS[depth]):
            name = f"res{index + 2}"
            blocks = [
                DynamiteBottleneck(
                    in_channels if block == 0 else out_channels,
                    out_channels,
                    bottleneck,
                    stride=2 if block == 0 and index > 0 else 1,
                )
                for block in range(num_blocks)
            ]
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
        self.out_channels = (256, 512, 1024, 2048)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """`(batch, 3, H, W)` -> `[res2 (batch, 256, H/4, W/4), ..., res5 (batch, 2048, H/32, W/32)]`."""
        x = self.stem(pixel_values)
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x)
        return features


def build(config: PretrainedConfig) -> DynamiteResNetBackbone:
    """The backbone of `config.backbone_config` (the released R50 where keys are missing)."""
    values = merge_backbone_config("resnet", config.backbone_config, _DEFAULTS)
    if values["depth"] not in _DEPTHS:
        raise ValueError(f"resnet depth must be one of {sorted(_DEPTHS)}, got {values['depth']!r}")
    if values["norm"] != "frozen_bn":
        raise ValueError(f"resnet norm must be 'frozen_bn' (the released models), got {values['norm']!r}")
    return DynamiteResNetBackbone(values["depth"])
