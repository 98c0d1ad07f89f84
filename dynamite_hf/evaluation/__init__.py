"""The click-based evaluation protocol of the paper (spec section 3): the clicker, the single-instance (NoC) and
multi-instance (NCI/NFO/NFI/mIoU) protocols. The dataset readers are in `dynamite_hf.data`."""

from __future__ import annotations

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
    "MULTI_INSTANCE_STRATEGIES",
    "Clicker",
    "MultiInstanceResult",
    "SingleInstanceResult",
    "distance_transform",
    "evaluate_multi_instance",
    "evaluate_single_instance",
    "exclusion_disk",
    "multi_instance_metrics",
    "single_instance_metrics",
]
