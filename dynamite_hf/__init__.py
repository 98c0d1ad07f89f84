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

# Importing the package makes AutoConfig / AutoModel resolve model_type "dynamite". (register_for_auto_class,
# which ships the code with the weights for trust_remote_code, cannot follow the backbones/ subpackage.)
AutoConfig.register("dynamite", DynamiteConfig)
AutoModel.register(DynamiteConfig, DynamiteModel)

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
