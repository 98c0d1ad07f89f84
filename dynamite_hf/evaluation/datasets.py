"""The benchmark readers, re-exported from their home `dynamite_hf.data.benchmarks` (and the schema conversions
from `dynamite_hf.data.instances`) so that imports from here keep working."""

from __future__ import annotations

from ..data.benchmarks import (
    DATASETS,
    IMAGE_SUFFIXES,
    EvaluationSample,
    area_order,
    find_by_stem,
    iter_dataset,
    paint_instances,
    read_dataset,
)
from ..data.instances import from_hf_row, to_hf_dataset

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "EvaluationSample",
    "area_order",
    "find_by_stem",
    "from_hf_row",
    "iter_dataset",
    "paint_instances",
    "read_dataset",
    "to_hf_dataset",
]
