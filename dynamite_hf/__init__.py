"""dynamite-hf: DynaMITe interactive multi-instance segmentation, Hugging Face native."""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .clicks import Click
from .models.dynamite.configuration_dynamite import PRESETS, DynamiteConfig
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor, load_image
from .models.dynamite.modeling_dynamite import (
    DynamiteImageEmbeddings,
    DynamiteModel,
    DynamiteModelOutput,
    DynamitePreTrainedModel,
)
from .models.dynamite.processing_dynamite import DynamiteProcessor

# Importing the package makes the Auto classes resolve model_type "dynamite".
AutoConfig.register("dynamite", DynamiteConfig)
AutoModel.register(DynamiteConfig, DynamiteModel)
AutoImageProcessor.register(DynamiteConfig, slow_image_processor_class=DynamiteImageProcessor)
AutoProcessor.register(DynamiteConfig, DynamiteProcessor)

from .predictor import DynamitePredictor  # noqa: E402  (after the registrations it relies on)

__all__ = [
    "PRESETS",
    "Click",
    "DynamiteConfig",
    "DynamiteImageEmbeddings",
    "DynamiteImageProcessor",
    "DynamiteModel",
    "DynamiteModelOutput",
    "DynamitePreTrainedModel",
    "DynamitePredictor",
    "DynamiteProcessor",
    "load_image",
]
__version__ = "0.1.0"
