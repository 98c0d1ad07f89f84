"""dynamite-hf: DynaMITe interactive multi-instance segmentation, Hugging Face native."""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .clicks import Click
from .models.dynamite.configuration_dynamite import PRESETS, DynamiteConfig
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor, load_image
from .models.dynamite.modeling_dynamite import (
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
AutoImageProcessor.register(DynamiteConfig, slow_image_processor_class=DynamiteImageProcessor)

from .predictor import DynamitePredictor  # noqa: E402  (after the registrations it relies on)

__all__ = [
    "PRESETS",
    "Click",
    "DynamiteConfig",
    "DynamiteImageFeatures",
    "DynamiteImageProcessor",
    "DynamitePredictor",
    "load_image",
    "DynamiteModel",
    "DynamiteModelOutput",
    "DynamitePreTrainedModel",
    "fuse_instances",
]
__version__ = "0.1.0"
