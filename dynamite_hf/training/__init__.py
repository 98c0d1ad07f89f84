"""Training (spec section 2): data and augmentation, click simulation, the loss, the Accelerate loop."""

from __future__ import annotations

from .augmentation import AugmentedSample, augment, large_scale_jitter, select_instances
from .click_simulation import corrective_clicks, initial_clicks
from .data import DynamiteTrainingDataset, TrainingOrder, collate
from .loss import deep_supervision_loss, mask_losses
from .module import DynamiteForInteractiveTraining, multistep_schedule, parameter_groups
from .trainer import DynamiteTrainingArguments, TrainingInterrupted, TrainingSetupError, train

__all__ = [
    "AugmentedSample",
    "DynamiteForInteractiveTraining",
    "DynamiteTrainingArguments",
    "DynamiteTrainingDataset",
    "TrainingInterrupted",
    "TrainingOrder",
    "TrainingSetupError",
    "augment",
    "collate",
    "corrective_clicks",
    "deep_supervision_loss",
    "initial_clicks",
    "large_scale_jitter",
    "mask_losses",
    "multistep_schedule",
    "parameter_groups",
    "select_instances",
    "train",
]
