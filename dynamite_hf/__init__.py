"""dynamite-hf: DynaMITe interactive multi-instance segmentation, Hugging Face native."""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
from transformers.pipelines.base import PipelineRegistry

from .clicks import Click
from .models.dynamite.configuration_dynamite import PRESETS, DynamiteConfig
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor, load_image
from .models.dynamite.modeling_dynamite import (
    DynamiteImageEmbeddings,
    DynamiteModel,
    DynamiteModelOutput,
    DynamitePreTrainedModel,
)
from .models.dynamite.pipeline_dynamite import PIPELINE_TASK, DynamiteImageSegmentationPipeline
from .models.dynamite.processing_dynamite import DynamiteProcessor

# Importing the package makes the Auto classes resolve model_type "dynamite".
AutoConfig.register("dynamite", DynamiteConfig)
AutoModel.register(DynamiteConfig, DynamiteModel)
AutoImageProcessor.register(DynamiteConfig, slow_image_processor_class=DynamiteImageProcessor)
AutoProcessor.register(DynamiteConfig, DynamiteProcessor)

# Saving writes each class's code and `auto_map` entry beside the weights and settings (transformers' remote code), so
# the Auto classes load a saved folder with `trust_remote_code=True` where this package is not installed.
DynamiteConfig.register_for_auto_class()
DynamiteModel.register_for_auto_class("AutoModel")
DynamiteImageProcessor.register_for_auto_class("AutoImageProcessor")
DynamiteProcessor.register_for_auto_class("AutoProcessor")
# The pipeline is registered in a registry of its own, which records the task in the class for
# `Pipeline.save_pretrained` (`custom_pipelines` in config.json), without replacing transformers' own
# image-segmentation pipeline for every other model, as the global PIPELINE_REGISTRY would.
PipelineRegistry(supported_tasks={}, task_aliases={}).register_pipeline(
    PIPELINE_TASK, pipeline_class=DynamiteImageSegmentationPipeline, pt_model=AutoModel, type="image"
)

from .hub import save_model_folder  # noqa: E402  (after the registrations they rely on)
from .predictor import DynamitePredictor  # noqa: E402

__all__ = [
    "PRESETS",
    "Click",
    "DynamiteConfig",
    "DynamiteImageEmbeddings",
    "DynamiteImageProcessor",
    "DynamiteImageSegmentationPipeline",
    "DynamiteModel",
    "DynamiteModelOutput",
    "DynamitePreTrainedModel",
    "DynamitePredictor",
    "DynamiteProcessor",
    "load_image",
    "save_model_folder",
]
__version__ = "0.1.0"
