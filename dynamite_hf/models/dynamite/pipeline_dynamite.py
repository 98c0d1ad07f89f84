"""DynaMITe as a transformers pipeline: an image and its clicks in; each clicked instance's mask and score, and the
label map, out.

The file travels in the model folder as remote code: the folder's `config.json` names it under `custom_pipelines`
for the task `image-segmentation`, so `pipeline("image-segmentation", model=folder_or_hub_id,
trust_remote_code=True)` loads it where this package is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from .image_processing_dynamite import ImageLike, load_image
from .processing_dynamite import DynamiteProcessor

PIPELINE_TASK = "image-segmentation"


class DynamiteImageSegmentationPipeline(Pipeline):
    r"""Interactive multi-instance segmentation: every instance clicked on an image, segmented at once.

    Call it with an image (a path, a PIL image or an `(H, W, 3)` uint8 RGB array) and its clicks, in the order they
    were made:

    - `input_points`: `[[x, y], ...]`, pixels of the image as given (continuous: `(10.5, 3.5)` is the centre of
      pixel column 10, row 3);
    - `input_labels`: `[k, ...]`, one per point: `k >= 1` a click on instance `k` (instances numbered 1..N, each
      with a click), `0` a background click.

    Or with a dict `{"image": ..., "input_points": ..., "input_labels": ...}`, or a list of such dicts (one result
    each). `refine_boundaries` (`bool`, *optional*) turns the processor's guided-filter boundary refinement on or
    off (default: on when `preprocessor_config.json` has a positive `guided_filter_radius`).

    Returns:
        A dict: `masks` `(N, H, W)` bool, one per instance, non-overlapping; `scores` `(N,)` float32, each mask's mean
        probability; `label_map` `(H, W)` int64 (0 background, `k` instance `k`). `H, W` are the image's.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> segmenter = pipeline("image-segmentation", model="models/dynamite-mobilenet-v2", trust_remote_code=True)
    >>> result = segmenter("photo.jpg", input_points=[[120, 300], [400, 80], [10, 10]], input_labels=[1, 2, 0])
    >>> result["masks"].shape  # (2, height, width): instances 1 and 2; the click at (10, 10) is background
    ```
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        input_points: Sequence | None = None,
        input_labels: Sequence | None = None,
        input_timestamps: Sequence | None = None,
        refine_boundaries: bool | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        clicks = {"input_points": input_points, "input_labels": input_labels, "input_timestamps": input_timestamps}
        postprocess = {} if refine_boundaries is None else {"refine_boundaries": refine_boundaries}
        return {key: value for key, value in clicks.items() if value is not None}, {}, postprocess

    def preprocess(
        self,
        inputs: ImageLike | dict[str, Any],
        input_points: Sequence | None = None,
        input_labels: Sequence | None = None,
        input_timestamps: Sequence | None = None,
    ) -> dict[str, Any]:
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"image", "input_points", "input_labels", "input_timestamps"}
            if "image" not in inputs or unknown:
                raise ValueError(
                    "a dict input must hold 'image', 'input_points' and 'input_labels' (and optionally "
                    f"'input_timestamps'), got keys {sorted(inputs)}"
                )
            image = inputs["image"]
            input_points = inputs.get("input_points", input_points)
            input_labels = inputs.get("input_labels", input_labels)
            input_timestamps = inputs.get("input_timestamps", input_timestamps)
        else:
            image = inputs
        if input_points is None or input_labels is None:
            raise ValueError(
                "input_points and input_labels are required: the clicks, e.g. input_points=[[120, 300], [400, 80]] "
                "((x, y) in pixels of the image) and input_labels=[1, 2] (instance k >= 1, 0 background)"
            )
        points = _as_array(input_points, "input_points", np.float64)
        labels = _as_array(input_labels, "input_labels", np.int64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(
                f"input_points must be a list of [x, y] clicks in pixels of the image, got shape {points.shape}"
            )
        if labels.shape != (len(points),):
            raise ValueError(f"input_labels must hold one label per click ({len(points)}), got shape {labels.shape}")
        array = load_image(image, self.image_processor.max_image_pixels, "image")
        timestamps = None if input_timestamps is None else [list(input_timestamps)]
        encoding = DynamiteProcessor(self.image_processor)(
            array, input_points=[points.tolist()], input_labels=[labels.tolist()], input_timestamps=timestamps
        )
        return {**encoding, "image": array}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        clicks = ("pixel_values", "input_points", "input_labels", "input_timestamps", "reshaped_input_sizes")
        outputs = self.model(**{key: model_inputs[key] for key in clicks if key in model_inputs})
        return {
            "pred_masks": outputs.pred_masks,
            "query_labels": outputs.query_labels,
            "original_sizes": model_inputs["original_sizes"],
            "reshaped_input_sizes": model_inputs["reshaped_input_sizes"],
            "image": model_inputs["image"],
        }

    def postprocess(self, model_outputs: dict[str, Any], refine_boundaries: bool | None = None) -> dict[str, Any]:
        refine = refine_boundaries if refine_boundaries is not None else self.image_processor.guided_filter_radius > 0
        return self.image_processor.post_process_masks(
            model_outputs["pred_masks"],
            model_outputs["query_labels"],
            model_outputs["original_sizes"],
            model_outputs["reshaped_input_sizes"],
            refine_boundaries=refine,
            images=[model_outputs["image"]] if refine else None,
        )[0]


def _as_array(values: Sequence, argument: str, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a list of numbers, got {values!r}") from None


__all__ = ["PIPELINE_TASK", "DynamiteImageSegmentationPipeline"]
