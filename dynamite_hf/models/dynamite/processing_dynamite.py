"""Images and clicks in, model inputs out, and instance masks back: DynaMITe's processor, as transformers' SAM
processor pairs an image processor with its prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_dynamite import DynamiteImageProcessor, ImageLike
from .interactive_transformer import PAD_LABEL


class DynamiteProcessor(ProcessorMixin):
    r"""Prepares images and clicks for [`DynamiteModel`] and turns its logits into instance masks.

    Clicks are given per image as a list in the order they were made: `input_points` `[image][click] -> [x, y]`
    (pixels of the original image, continuous: `(10.5, 3.5)` is the centre of pixel column 10, row 3) and
    `input_labels` `[image][click]`: `k >= 1` a positive click on instance `k`, `0` a background (negative) click.
    Instances are numbered 1..N as in the label map `post_process_masks` returns (0 is background); for a single
    object this is SAM's convention (1 positive, 0 negative). Images with fewer clicks are padded with label -10.

    Args:
        image_processor ([`DynamiteImageProcessor`]): resizes, normalises and pads the images, and post-processes.

    Example:

    ```python
    >>> inputs = processor(image, input_points=[[[300.0, 120.0], [80.0, 400.0]]], input_labels=[[1, 2]])
    >>> outputs = model(**inputs)
    >>> masks = processor.post_process_masks(
    ...     outputs.pred_masks, outputs.query_labels, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    ... )[0]["masks"]  # (2, height, width) bool
    ```
    """

    def __init__(self, image_processor: DynamiteImageProcessor) -> None:
        super().__init__(image_processor)

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        input_points: Sequence | Tensor | None = None,
        input_labels: Sequence | Tensor | None = None,
        input_timestamps: Sequence | Tensor | None = None,
        original_sizes: Tensor | Sequence[tuple[int, int]] | None = None,
        reshaped_input_sizes: Tensor | Sequence[tuple[int, int]] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Images -> `pixel_values`, `original_sizes`, `reshaped_input_sizes` (see `DynamiteImageProcessor`);
        clicks -> `input_points` `(batch, num_clicks, 2)` float64 `(x, y)` in pixels of the resized image,
        `input_labels` `(batch, num_clicks)` int64 and, if given, `input_timestamps` `(batch, num_clicks)` int64
        (the global click counter; default: the order of the list).

        Clicks alone (no `images`: the image was processed before) need `original_sizes` and
        `reshaped_input_sizes` as the processor returned them for the image.
        """
        if images is not None:
            encoding = self.image_processor(images, return_tensors=return_tensors, **kwargs)
            original_sizes, reshaped_input_sizes = encoding["original_sizes"], encoding["reshaped_input_sizes"]
        else:
            if kwargs:
                raise ValueError(f"Unexpected arguments {sorted(kwargs)} (image arguments without images)")
            if input_points is None:
                raise ValueError("Give images, clicks (input_points, input_labels), or both")
            if original_sizes is None or reshaped_input_sizes is None:
                raise ValueError("clicks without images need original_sizes and reshaped_input_sizes")
            encoding = BatchFeature(
                {
                    "original_sizes": torch.as_tensor(original_sizes, dtype=torch.long).view(-1, 2),
                    "reshaped_input_sizes": torch.as_tensor(reshaped_input_sizes, dtype=torch.long).view(-1, 2),
                }
            )
        if (input_points is None) != (input_labels is None):
            raise ValueError("input_points and input_labels go together: give both or neither")
        if input_points is None:
            return encoding
        points, labels, timestamps = self._click_tensors(
            input_points, input_labels, input_timestamps, encoding["original_sizes"].tolist()
        )
        scale = encoding["reshaped_input_sizes"].double() / encoding["original_sizes"].double()  # (batch, yx)
        encoding["input_points"] = points * scale.flip(-1)[:, None, :]
        encoding["input_labels"] = labels
        if timestamps is not None:
            encoding["input_timestamps"] = timestamps
        return encoding

    @staticmethod
    def _click_tensors(
        input_points: Sequence | Tensor,
        input_labels: Sequence | Tensor,
        input_timestamps: Sequence | Tensor | None,
        original_sizes: list[list[int]],
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Nested lists (or tensors) of clicks -> padded tensors, checked against the original images."""
        points = _per_image(input_points, "input_points")
        labels = _per_image(input_labels, "input_labels")
        timestamps = _per_image(input_timestamps, "input_timestamps") if input_timestamps is not None else None
        if len(points) != len(original_sizes) or len(labels) != len(points):
            raise ValueError(
                f"input_points and input_labels need one list per image ({len(original_sizes)}), got "
                f"{len(points)} and {len(labels)}"
            )
        length = max(len(image_points) for image_points in points)
        point_tensor = torch.zeros(len(points), length, 2, dtype=torch.float64)
        label_tensor = torch.full((len(points), length), PAD_LABEL, dtype=torch.long)
        time_tensor = torch.zeros(len(points), length, dtype=torch.long) if timestamps is not None else None
        for index, (image_points, image_labels, (height, width)) in enumerate(
            zip(points, labels, original_sizes, strict=True)
        ):
            try:
                array = np.asarray(image_points, dtype=np.float64)
            except (TypeError, ValueError):
                array = None
            if array is None or array.ndim != 2 or array.shape[1] != 2:
                raise ValueError(
                    f"input_points[{index}] must be a list of [x, y] points (input_points is [image][click][x, y]), "
                    f"got {image_points!r}"
                )
            if len(image_points) == 0 or len(image_points) != len(image_labels):
                raise ValueError(
                    f"input_points[{index}] and input_labels[{index}] must list the same clicks, at least one "
                    f"(got {len(image_points)} points and {len(image_labels)} labels)"
                )
            for click, ((x, y), label) in enumerate(zip(array.tolist(), image_labels, strict=True)):
                if int(label) != PAD_LABEL and not (0 <= x < width and 0 <= y < height):
                    raise ValueError(
                        f"input_points[{index}][{click}] at (x={x}, y={y}) lies outside the image of {height}x{width} "
                        f"pixels (x in [0, {width}), y in [0, {height}))"
                    )
            point_tensor[index, : len(array)] = torch.from_numpy(array)
            label_tensor[index, : len(image_labels)] = torch.as_tensor([int(label) for label in image_labels])
            if time_tensor is not None:
                if len(timestamps[index]) != len(image_labels):
                    raise ValueError(f"input_timestamps[{index}] must have one entry per click ({len(image_labels)})")
                time_tensor[index, : len(image_labels)] = torch.as_tensor([int(t) for t in timestamps[index]])
        return point_tensor, label_tensor, time_tensor

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write `preprocessor_config.json`, the image processor's file: this processor holds no settings of its own,
        so `DynamiteImageProcessor`, `AutoImageProcessor` and `AutoProcessor` all read that one file (transformers'
        default, a `processor_config.json` nesting it, is a second file that only processors read). When this class
        is registered for `AutoProcessor`, its entry joins the file's `auto_map` and its code is copied beside it."""
        os.makedirs(save_directory, exist_ok=True)
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=self.image_processor)
        return self.image_processor.save_pretrained(save_directory, **kwargs)

    def post_process_masks(self, *args: Any, **kwargs: Any) -> list[dict[str, Tensor]]:
        """`DynamiteImageProcessor.post_process_masks`: per-query logits -> instance masks, scores, label map."""
        return self.image_processor.post_process_masks(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_points", "input_labels", "input_timestamps", "reshaped_input_sizes"]


def _per_image(values: Sequence | Tensor, argument: str) -> list:
    """A tensor or nested list with one entry per image -> a list of per-image lists (a tensor's padding, label
    -10, is dropped by the caller through the labels)."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (list, tuple)) for v in values):
        raise ValueError(f"{argument} must hold one list per image, e.g. [[...]] for one image, got {values!r}")
    return list(values)


__all__ = ["DynamiteProcessor"]
