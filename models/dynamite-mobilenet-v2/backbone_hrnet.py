"""HRNet (HigherHRNet layout from detectron2's DensePose project; HRNet-W32 in the released model).

Module names follow the original (`conv1`, `layer1`, `transition1`, `stage2.0.branches`, `fuse_layers`), so a
released checkpoint maps one to one. The outputs are the four stage-4 branches `p1..p4` (strides 4, 8, 16, 32);
the original declared stride 1 for all of them, which is why the released pixel decoder has two FPN levels
(`DynamiteConfig.pixel_decoder_num_fpn_levels = 2` in the `hrnet_w32` preset).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .configuration_dynamite import BACKBONE_DEFAULTS, merge_backbone_config

_DEFAULTS = BACKBONE_DEFAULTS["hrnet"]


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DynamiteHRNetBasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x)


class DynamiteHRNetBottleneck(nn.Module):
    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
            if in_channels != planes * 4
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class DynamiteHRNetModule(nn.Module):
    """Parallel branches of basic blocks, then every branch fused into every other."""

    def __init__(self, channels: list[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(DynamiteHRNetBasicBlock(c) for _ in range(blocks))) for c in channels
        )
        fuse_layers = []
        for i, target in enumerate(channels):
            row: list[nn.Module | None] = []
            for j, source in enumerate(channels):
                if j > i:  # coarser: 1x1 conv + BN, then nearest upsampling
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(source, target, 1, bias=False),
                            nn.BatchNorm2d(target),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:  # finer: strided 3x3 convs, ReLU between them but not after the last
                    steps = [_conv_bn(source, source, 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(source, target, 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        x = [branch(value) for branch, value in zip(self.branches, inputs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, len(x)):
                y = y + (x[j] if i == j else row[j](x[j])[:, :, : y.shape[2], : y.shape[3]])
            fused.append(F.relu(y))
        return fused


class DynamiteHRNetBackbone(nn.Module):
    """HRNet returning `p1..p4` (strides 4, 8, 16, 32; `width * (1, 2, 4, 8)` channels)."""

    def __init__(self, width: int, stage_modules: list[int], blocks_per_branch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(*(DynamiteHRNetBottleneck(64 if i == 0 else 256, 64) for i in range(4)))
        previous = [256]
        for stage, num_modules in enumerate(stage_modules, start=2):
            channels = [width * 2**i for i in range(stage)]
            self.add_module(f"transition{stage - 1}", self._transition(previous, channels))
            self.add_module(
                f"stage{stage}",
                nn.Sequential(*(DynamiteHRNetModule(channels, blocks_per_branch) for _ in range(num_modules))),
            )
            previous = channels
        self.out_channels = tuple(previous)

    @staticmethod
    def _transition(previous: list[int], current: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, channels in enumerate(current):
            if i < len(previous):
                layers.append(_conv_bn(previous[i], channels, 3, 1, True) if channels != previous[i] else None)
            else:  # a new, coarser branch from the coarsest existing one
                steps = [
                    _conv_bn(previous[-1], channels if k == i - len(previous) else previous[-1], 3, 2, True)
                    for k in range(i + 1 - len(previous))
                ]
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """`(batch, 3, H, W)` -> four maps `(batch, width * 2**i, H / s, W / s)` for s = 4, 8, 16, 32."""
        x = F.relu(self.bn1(self.conv1(pixel_values)))
        x = self.layer1(F.relu(self.bn2(self.conv2(x))))
        branches = [x]
        for stage in range(2, 5):
            transition = getattr(self, f"transition{stage - 1}")
            # As the original: a transition layer always reads the coarsest existing branch.
            inputs = [branches[i] if layer is None else layer(branches[-1]) for i, layer in enumerate(transition)]
            branches = getattr(self, f"stage{stage}")(inputs)
        return branches


def build(config: PretrainedConfig) -> DynamiteHRNetBackbone:
    """The backbone of `config.backbone_config` (the released HRNet-W32 where keys are missing)."""
    values = merge_backbone_config("hrnet", config.backbone_config, _DEFAULTS)
    if len(values["stage_modules"]) != 3:
        raise ValueError(f"hrnet stage_modules must list 3 stages, got {values['stage_modules']!r}")
    return DynamiteHRNetBackbone(**values)
