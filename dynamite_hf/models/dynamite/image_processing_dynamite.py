"""Images in, model inputs out, and back: the original's test-time resize, normalisation and padding, click
mapping between the user's image and the model's frame, and post-processing to instance masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ...clicks import Click
from .configuration_dynamite import DynamiteConfig

ImageLike = str | Path | Image.Image | np.ndarray

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


def load_image(
    image: ImageLike, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, argument: str = "image", name: str | None = None
) -> np.ndarray:
    """Any supported image -> `(height, width, 3)` uint8 RGB array.

    Accepts a path, a PIL image or a numpy array. Conversion rules: EXIF orientation is applied to files (as
    detectron2's reader does); grayscale (`HxW` or `HxWx1`) is replicated to three channels; an alpha channel
    (`HxWx4`, RGBA, LA, palette with transparency) is dropped, keeping the colour values as stored. Images larger
    than `max_image_pixels` are refused before they are decoded (decompression bombs).

    Args:
        argument: how error messages name the input.
        name: how error messages name a file given by path (default: the path), e.g. the name it was uploaded
            under rather than the server's temporary copy.

    Raises:
        ValueError: naming `argument` for empty, corrupt, oversized or wrongly typed images.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        shown = repr(str(path) if name is None else name)
        if not path.is_file():
            raise ValueError(f"{argument}: no such file {shown}")
        if path.stat().st_size == 0:
            raise ValueError(f"{argument}: {shown} is an empty file, not an image")
        try:
            with Image.open(path) as opened:
                _check_pixels(opened.size, max_image_pixels, argument)
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except Image.DecompressionBombError as error:
            raise ValueError(f"{argument}: {shown} is too large to decode safely ({error})") from None
        except UnidentifiedImageError:  # Pillow's message only repeats the path
            raise ValueError(
                f"{argument}: {shown} is not a readable image (not an image format Pillow knows)"
            ) from None
        except (OSError, SyntaxError) as error:
            raise ValueError(f"{argument}: {shown} is not a readable image ({error})") from None
    if isinstance(image, Image.Image):
        _check_pixels(image.size, max_image_pixels, argument)
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{argument} must be a path, a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{argument} must hold uint8 values 0-255, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{argument} must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{argument} is empty (shape {image.shape})")
    _check_pixels((image.shape[1], image.shape[0]), max_image_pixels, argument)
    return np.ascontiguousarray(image[:, :, :3])


def _check_pixels(size_wh: tuple[int, int], max_image_pixels: int, argument: str) -> None:
    if size_wh[0] * size_wh[1] > max_image_pixels:
        raise ValueError(
            f"{argument} has {size_wh[0]}x{size_wh[1]} = {size_wh[0] * size_wh[1]:,} pixels, more than the limit of "
            f"{max_image_pixels:,} (max_image_pixels); downscale it first"
        )


class DynamiteImageProcessor(BaseImageProcessor):
    r"""Prepares images for [`DynamiteModel`] and turns its outputs into masks at the original resolution.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Resize as detectron2's `ResizeShortestEdge` (the original's test-time resize): shortest edge to
            `short_edge`, longest capped at `max_size`, bilinear on the uint8 image.
        short_edge (`int`, *optional*, defaults to 800): target shortest edge.
        max_size (`int`, *optional*, defaults to 1333): cap on the longest edge.
        image_mean (`list[float]`, *optional*): RGB mean on the 0-255 scale.
        image_std (`list[float]`, *optional*): RGB standard deviation on the 0-255 scale.
        size_divisibility (`int`, *optional*, defaults to 32): zero padding (after normalisation) at the bottom
            and right up to a multiple of this.
        max_image_pixels (`int`, *optional*, defaults to 100,000,000): larger images are refused.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        short_edge: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (123.675, 116.28, 103.53),
        image_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 32,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.short_edge = short_edge
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisibility = size_divisibility
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_config(cls, config: DynamiteConfig, **kwargs: Any) -> DynamiteImageProcessor:
        """The processor a model of `config` expects."""
        values = {
            "short_edge": config.test_short_edge,
            "max_size": config.test_max_size,
            "image_mean": config.pixel_mean,
            "image_std": config.pixel_std,
            "size_divisibility": config.size_divisibility,
        }
        return cls(**{**values, **kwargs})

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` after the resize, computed as detectron2's `ResizeShortestEdge`."""
        if not self.do_resize:
            return height, width
        scale = self.short_edge / min(height, width)
        new_height, new_width = (
            (self.short_edge, scale * width) if height < width else (scale * height, self.short_edge)
        )
        if max(new_height, new_width) > self.max_size:
            scale = self.max_size / max(new_height, new_width)
            new_height, new_width = new_height * scale, new_width * scale
        return int(new_height + 0.5), int(new_width + 0.5)

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Load, resize, normalise and pad images into one batch.

        Returns:
            `BatchFeature` with `pixel_values` `(batch, 3, Hp, Wp)` float32 (the batch padded to its largest image,
            then to a multiple of `size_divisibility`), `image_sizes` `(batch, 2)` (resized, before padding) and
            `original_sizes` `(batch, 2)`, both `(height, width)` int64.
        """
        if kwargs:
            raise ValueError(f"Unexpected arguments to preprocess: {sorted(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        single = isinstance(images, (str, Path, Image.Image, np.ndarray))
        images = [images] if single else list(images)
        if not images:
            raise ValueError("images is empty")
        arrays = [
            load_image(image, self.max_image_pixels, "image" if single else f"images[{i}]")
            for i, image in enumerate(images)
        ]
        resized = [self._resize(array) for array in arrays]
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        divisor = self.size_divisibility
        height = -(-max(r.shape[0] for r in resized) // divisor) * divisor
        width = -(-max(r.shape[1] for r in resized) // divisor) * divisor
        pixel_values = torch.zeros(len(resized), 3, height, width)
        for index, array in enumerate(resized):
            normalised = (torch.tensor(array).permute(2, 0, 1).float() - mean) / std
            pixel_values[index, :, : array.shape[0], : array.shape[1]] = normalised
        return BatchFeature(
            {
                "pixel_values": pixel_values,
                "image_sizes": torch.tensor([r.shape[:2] for r in resized], dtype=torch.long),
                "original_sizes": torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long),
            }
        )

    def _resize(self, image: np.ndarray) -> np.ndarray:
        height, width = self.resized_size(*image.shape[:2])
        if (height, width) == image.shape[:2]:
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    @staticmethod
    def clicks_to_model_frame(
        clicks: Sequence[Click], original_size: tuple[int, int], image_size: tuple[int, int]
    ) -> list[Click]:
        """Map clicks from the original image to the resized image the model sees (`frame="model"`)."""
        scale_row = image_size[0] / original_size[0]
        scale_col = image_size[1] / original_size[1]
        mapped = []
        for index, click in enumerate(clicks):
            if click.frame == "model":
                mapped.append(click)
                continue
            if not (0 <= click.row < original_size[0] and 0 <= click.col < original_size[1]):
                raise ValueError(
                    f"clicks[{index}] at (row={click.row}, col={click.col}) lies outside the image of "
                    f"{original_size[0]}x{original_size[1]} pixels"
                )
            mapped.append(click.rescaled(scale_row, scale_col, "model"))
        return mapped

    @staticmethod
    def post_process_instance_segmentation(outputs: Any) -> list[dict[str, torch.Tensor]]:
        """Per image: `masks` `(num_instances, H, W)` bool (non-overlapping) and `label_map` `(H, W)` int64
        (0 = background, k + 1 = instance k), at the model's output size (pass `output_sizes` = the original
        sizes to the model to get them at the original resolution)."""
        results = []
        for label_map, logits in zip(outputs.label_maps, outputs.instance_logits):
            ids = torch.arange(1, logits.shape[0] + 1, device=label_map.device).view(-1, 1, 1)
            results.append({"masks": label_map[None] == ids, "label_map": label_map})
        return results
