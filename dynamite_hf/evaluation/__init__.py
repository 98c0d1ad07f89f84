"""The click-based evaluation protocol of the paper (spec section 3): the clicker, the single-instance (NoC) and
multi-instance (NCI/NFO/NFI/mIoU) protocols, and (re-exported from `dynamite_hf.data`) the dataset readers."""

from __future__ import annotations

from ..data.benchmarks import DATASETS, EvaluationSample, iter_dataset, read_dataset
from ..data.instances import from_hf_row, to_hf_dataset
from .clicker import Clicker, distance_transform, exclusion_disk
from .protocols import (
    MULTI_INSTANCE_STRATEGIES,
    MultiInstanceResult,
    SingleInstanceResult,
    evaluate_multi_instance,
    evaluate_single_instance,
    multi_instance_metrics,
    single_instance_metrics,
)

__all__ = [
    "DATASETS",
    "MULTI_INSTANCE_STRATEGIES",
    "Clicker",
    "EvaluationSample",
    "MultiInstanceResult",
    "SingleInstanceResult",
    "distance_transform",
    "evaluate_multi_instance",
    "evaluate_single_instance",
    "exclusion_disk",
    "from_hf_row",
    "iter_dataset",
    "multi_instance_metrics",
    "read_dataset",
    "single_instance_metrics",
    "to_hf_dataset",
]
