"""The instance dataset schema and its source readers, re-exported from their home `dynamite_hf.data.instances`
so that imports from here keep working."""

from __future__ import annotations

from .data.instances import (
    SOURCE_KINDS,
    InstanceExample,
    SkipCounter,
    build_dataset,
    decode_rle,
    encode_example,
    example_from_sample,
    from_hf_row,
    instance_features,
    read_benchmark,
    read_binary_folder,
    read_clothing,
    read_coco_json,
    read_id_folder,
    read_source,
    read_yolo,
    split_components,
    to_hf_dataset,
)

__all__ = [
    "SOURCE_KINDS",
    "InstanceExample",
    "SkipCounter",
    "build_dataset",
    "decode_rle",
    "encode_example",
    "example_from_sample",
    "from_hf_row",
    "instance_features",
    "read_benchmark",
    "read_binary_folder",
    "read_clothing",
    "read_coco_json",
    "read_id_folder",
    "read_source",
    "read_yolo",
    "split_components",
    "to_hf_dataset",
]
