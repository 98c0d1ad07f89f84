"""dynamite-hf: DynaMITe interactive multi-instance segmentation, Hugging Face native."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .clicks import Click
from .configuration_dynamite import PRESETS, DynamiteConfig
from .modeling_dynamite import (
    DynamiteImageFeatures,
    DynamiteModel,
    DynamiteModelOutput,
    DynamitePreTrainedModel,
    fuse_instances,
)

AutoConfig.register("dynamite", DynamiteConfig)
AutoModel.register(DynamiteConfig, DynamiteModel)
DynamiteConfig.register_for_auto_class()
DynamiteModel.register_for_auto_class("AutoModel")

__all__ = [
    "PRESETS",
    "Click",
    "DynamiteConfig",
    "DynamiteImageFeatures",
    "DynamiteModel",
    "DynamiteModelOutput",
    "DynamitePreTrainedModel",
    "fuse_instances",
]
__version__ = "0.1.0"
