"""The backbone families, their default hyper-parameters and the merge of a `backbone_config` with them.

Free of torch and of the family modules, so that `configuration_dynamite` imports it at module level and the
backbones never need the configuration at run time (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BACKBONE_TYPES = ("resnet", "swin", "mit", "hrnet", "mobilenet_v2")

# Each family's defaults are the released values (R50, HRNet-W32, MiT-B0, Swin-T; MobileNetV2 for the CPU preset).
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet": {"depth": 50, "norm": "frozen_bn"},
    "hrnet": {"width": 32, "stage_modules": [1, 4, 3], "blocks_per_branch": 4},
    "mit": {
        "embed_dims": [32, 64, 160, 256],
        "num_heads": [1, 2, 5, 8],
        "depths": [2, 2, 2, 2],
        "sr_ratios": [8, 4, 2, 1],
        "mlp_ratio": 4,
        "drop_path_rate": 0.1,
        "freeze_first_stage": True,
    },
    "swin": {
        "embed_dim": 96,
        "depths": [2, 2, 6, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "mlp_ratio": 4.0,
        "drop_path_rate": 0.3,
        "pretrain_img_size": 224,
        "patch_size": 4,
    },
    "mobilenet_v2": {"width_multiplier": 1.0},
}


def merge_backbone_config(family: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated by `given`; a key the family does not know is a `ValueError` naming it."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {family} backbone_config keys {sorted(unknown)}; expected {sorted(defaults)}")
    return {**defaults, **given}
