"""Backbones of DynaMITe, one file per family, and the factory that picks one.

Every backbone is a plain ``nn.Module`` with

* ``out_channels: tuple[int, int, int, int]``: channels of the four feature levels;
* ``forward(pixel_values) -> list[Tensor]``: the four feature maps at strides 4, 8, 16 and 32
  (``pixel_values`` is the normalised, padded ``(batch, 3, height, width)`` float tensor).

Each family module also provides ``convert_original_state_dict(state_dict)``, which maps the keys of
a released DynaMITe checkpoint (without the ``backbone.`` prefix) to the keys of our module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from ..configuration_dynamite import DynamiteConfig

from ._config import BACKBONE_DEFAULTS, BACKBONE_TYPES

__all__ = ["BACKBONE_DEFAULTS", "BACKBONE_TYPES", "build_backbone", "convert_backbone_state_dict"]


def _family_module(backbone_type: str):
    if backbone_type == "resnet":
        from . import resnet as module
    elif backbone_type == "swin":
        from . import swin as module
    elif backbone_type == "mit":
        from . import mit as module
    elif backbone_type == "hrnet":
        from . import hrnet as module
    elif backbone_type == "mobilenet_v2":
        from . import mobilenet_v2 as module
    else:
        raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}")
    return module


def build_backbone(config: DynamiteConfig) -> nn.Module:
    """Build the backbone named by ``config.backbone_type`` with ``config.backbone_config``."""
    return _family_module(config.backbone_type).build(config.backbone_config)


def convert_backbone_state_dict(backbone_type: str, state_dict: dict) -> dict:
    """Map original backbone keys (``backbone.`` prefix stripped) to our module's keys."""
    return _family_module(backbone_type).convert_original_state_dict(state_dict)
