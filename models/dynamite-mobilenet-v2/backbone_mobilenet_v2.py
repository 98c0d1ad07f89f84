"""MobileNetV2 (torchvision's architecture) as the backbone of the CPU-friendly preset.

Module names follow torchvision (`features.N...`), so its ImageNet file loads directly. The four levels are
the outputs of the last block at each stride: `features[3]` (24 ch, stride 4), `features[6]` (32 ch, stride 8),
`features[13]` (96 ch, stride 16) and `features[17]` (320 ch, stride 32); the final 1x1 conv to 1280 channels
and the classifier are not used.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import PretrainedConfig

from .configuration_dynamite import BACKBONE_DEFAULTS, merge_backbone_config

# (expansion t, channels c, repeats n, first stride s), torchvision's table.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TAPS = (3, 6, 13, 17)
_DEFAULTS = BACKBONE_DEFAULTS["mobilenet_v2"]


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class DynamiteConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class DynamiteInvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), with a residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expansion))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(DynamiteConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            DynamiteConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class DynamiteMobileNetV2Backbone(nn.Module):
    """MobileNetV2 features at strides 4, 8, 16, 32."""

    def __init__(self, width_multiplier: float = 1.0) -> None:
        super().__init__()
        in_channels = _make_divisible(32 * width_multiplier)
        layers: list[nn.Module] = [DynamiteConvBNReLU6(3, in_channels, stride=2)]
        for expansion, channels, repeats, stride in _SETTINGS:
            out_channels = _make_divisible(channels * width_multiplier)
            for index in range(repeats):
                layers.append(
                    DynamiteInvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion)
                )
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = tuple(_make_divisible(c * width_multiplier) for c in (24, 32, 96, 320))

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """`(batch, 3, H, W)` -> four maps `(batch, C_i, H / s, W / s)` for s = 4, 8, 16, 32."""
        outputs, x = [], pixel_values
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                outputs.append(x)
        return outputs


def build(config: PretrainedConfig) -> DynamiteMobileNetV2Backbone:
    """The backbone of `config.backbone_config` (width 1.0 where missing)."""
    values = merge_backbone_config("mobilenet_v2", config.backbone_config, _DEFAULTS)
    return DynamiteMobileNetV2Backbone(**values)
