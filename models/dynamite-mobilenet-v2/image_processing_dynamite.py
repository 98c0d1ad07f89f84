"""Images in, model inputs out, and back: the original's test-time resize, normalisation and padding, and the one
path from per-query logits to instance masks and a label map (`post_process_masks`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .refinement import BoundaryRefiner

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


# Working sizes of the presets whose processor differs from the original's test-time resize.
PRESET_SIZES = {"mobilenet_v2": {"shortest_edge": 448, "longest_edge": 747}}


def fuse_queries(query_logits: Tensor, query_labels: Tensor, num_instances: int) -> tuple[Tensor, Tensor | None]:
    """Each instance's logits, the max over its queries, and the background's, the max over the background queries
    (spec section 1.5; training's loss groups the same way).

    Args:
        query_logits: `(num_queries, ...)`.
        query_labels: `(num_queries,)`: the instance `k >= 1` of each query, 0 for background queries.
        num_instances: N; instances 1..N each have a query.

    Returns:
        `(N, ...)` and `(...)`, or None when no query is background.
    """
    instances = torch.stack([query_logits[query_labels == k].amax(0) for k in range(1, num_instances + 1)])
    background = query_logits[query_labels == 0]
    return instances, background.amax(0) if background.shape[0] else None


def label_instances(
    instance_scores: Tensor, background_score: Tensor | None = None, dtype: torch.dtype = torch.long
) -> Tensor:
    """The label map `(height, width)` of per-instance scores `(num_instances, height, width)` and the background's
    `(height, width)` (or None): 0 where the background is strictly highest, else `k` for the highest instance `k`
    (1-based), the lower instance on ties. This is the original's argmax over `[instances..., background
    queries...]`, in which `torch.argmax` keeps the first index on ties."""
    label_map, best = _label_and_best(instance_scores)
    if background_score is not None:
        _background_where_higher(label_map, best, background_score)
    return label_map.to(dtype)


def _label_and_best(instance_scores: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """`label_instances`' map without the background (int32), and each pixel's highest instance score (its own
    instance's), of instances 1, 2, ... given one `(height, width)` map at a time."""
    # A running comparison (a reduction over a short leading axis is slow in torch); updating only on a strictly
    # greater value keeps the first index on ties. Instance k is the highest label so far, so `maximum(label, k *
    # better)` sets it where `better` (several times faster than `masked_fill_`).
    best_value = label_map = None
    for index, scores in enumerate(instance_scores):
        if best_value is None:
            best_value = scores.clone()
            label_map = torch.ones(best_value.shape, dtype=torch.int32, device=best_value.device)
            continue
        better = scores > best_value
        torch.maximum(best_value, scores, out=best_value)
        torch.maximum(label_map, better * torch.tensor(index + 1, dtype=torch.int32), out=label_map)
    if best_value is None:
        raise ValueError("label_instances needs at least one instance")
    return label_map, best_value


def _background_where_higher(label_map: Tensor, best_value: Tensor, background_score: Tensor) -> None:
    """Label 0, in place, where the background's score is strictly above every instance's."""
    label_map.mul_((background_score > best_value).logical_not_())


def _sums_per_label(labels: Tensor, weights: Tensor, num_labels: int, lanes: int = 8) -> Tensor:
    """`torch.bincount(labels, weights.double(), minlength=num_labels)` (labels below `num_labels`), summed in
    `lanes` interleaved accumulators per label: a label map's long runs of one label otherwise make every addition
    wait for the previous one (about 3x slower)."""
    whole = labels.numel() // lanes * lanes
    offsets = torch.arange(lanes, dtype=labels.dtype, device=labels.device) * num_labels
    spread = (labels[:whole].view(-1, lanes) + offsets).view(-1)
    sums = torch.bincount(spread, weights=weights[:whole].double(), minlength=lanes * num_labels)
    sums = sums.view(lanes, num_labels).sum(0, dtype=torch.float64)  # (an empty input's bincount is int64)
    if whole < labels.numel():
        sums += torch.bincount(labels[whole:], weights=weights[whole:].double(), minlength=num_labels)
    return sums


def resize_logits(
    logits: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int]
) -> Tensor:
    """Stride-4 logits `(channels, h, w)` -> `(channels, *output_size)`, as the original: upsampled to the padded size,
    the padding cropped, resized to the output size (bilinear, `align_corners=False`)."""
    resized = F.interpolate(logits[None], size=tuple(padded_size), mode="bilinear", align_corners=False)
    resized = resized[:, :, : image_size[0], : image_size[1]]
    if tuple(output_size) != tuple(image_size):
        resized = F.interpolate(resized, size=tuple(output_size), mode="bilinear", align_corners=False)
    return resized[0]


def _resized_fused_groups(
    query_logits: Tensor,
    query_labels: Tensor,
    num_instances: int,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Iterator[Tensor]:
    """`fuse_queries(resize_logits(query_logits, ...))` one map at a time, bit for bit: instances 1..N, then the
    background if any query is background, each `output_size`. A few queries go through each `interpolate` call
    (at small sizes one map's resize runs on one thread), at most about 2^20 output pixels: the full-size logits of
    every query never exist at once (78 MB for 20 queries at 800 x 1216)."""
    groups = [query_labels == k for k in range(1, num_instances + 1)]
    if bool((query_labels == 0).any()):
        groups.append(query_labels == 0)
    queries = [(index, query) for index, members in enumerate(groups) for query in members.nonzero()[:, 0].tolist()]
    per_call = max(1, 2**20 // (output_size[0] * output_size[1]))
    current, current_index = None, None
    for start in range(0, len(queries), per_call):
        part = queries[start : start + per_call]
        indices = [query for _, query in part]
        if indices == list(range(indices[0], indices[0] + len(indices))):  # the model orders queries by instance
            chosen = query_logits[indices[0] : indices[0] + len(indices)]
        else:
            chosen = query_logits[indices]
        for (index, _), logits in zip(part, resize_logits(chosen, padded_size, image_size, output_size), strict=True):
            if index == current_index:
                torch.maximum(current, logits, out=current)
                continue
            if current is not None:
                yield current
            current, current_index = logits, index
    if current is not None:
        yield current


class DynamiteImageProcessor(BaseImageProcessor):
    r"""Prepares images for [`DynamiteModel`] and turns its per-query logits into instance masks.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Resize as detectron2's `ResizeShortestEdge` (the original's test-time resize): the shortest edge to
            `size["shortest_edge"]`, the longest capped at `size["longest_edge"]`, bilinear on the uint8 image.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`):
            The resize's target.
        image_mean (`list[float]`, *optional*, defaults to `[123.675, 116.28, 103.53]`):
            RGB mean on the 0-255 scale (the original normalises unscaled pixels).
        image_std (`list[float]`, *optional*, defaults to `[58.395, 57.12, 57.375]`):
            RGB standard deviation on the 0-255 scale.
        size_divisor (`int`, *optional*, defaults to 32):
            Zero padding (after normalisation) at the bottom and right up to a multiple of this.
        max_image_pixels (`int`, *optional*, defaults to 100,000,000):
            Larger images are refused before they are decoded.
        guided_filter_radius (`int`, *optional*, defaults to 0):
            Boundary refinement in `post_process_masks` (`refinement.py`): the radius, in pixels of the resized
            image, of a colour guided filter applied to the instance probabilities before the label map. 0 (the
            default, and the released models') leaves the masks as the original makes them.
        guided_filter_eps (`float`, *optional*, defaults to 1e-3):
            The guided filter's regularisation (colours in [0, 1]): larger values smooth across weaker edges.
        guided_filter_temperature (`float`, *optional*, defaults to 2.0):
            The filtered probabilities are the softmax over `[instances..., background]` of the logits divided by
            this.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        image_mean: Sequence[float] = (123.675, 116.28, 103.53),
        image_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisor: int = 32,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        guided_filter_radius: int = 0,
        guided_filter_eps: float = 1e-3,
        guided_filter_temperature: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        size = dict(size) if size is not None else {"shortest_edge": 800, "longest_edge": 1333}
        if set(size) != {"shortest_edge", "longest_edge"} or not all(
            isinstance(v, int) and v > 0 for v in size.values()
        ):
            raise ValueError(f"size must be {{'shortest_edge': int > 0, 'longest_edge': int > 0}}, got {size!r}")
        if (
            isinstance(guided_filter_radius, bool)
            or not isinstance(guided_filter_radius, int)
            or guided_filter_radius < 0
        ):
            raise ValueError(f"guided_filter_radius must be an int >= 0 (0: off), got {guided_filter_radius!r}")
        if not guided_filter_eps > 0 or not guided_filter_temperature > 0:
            raise ValueError(
                "guided_filter_eps and guided_filter_temperature must be positive, got "
                f"{guided_filter_eps!r} and {guided_filter_temperature!r}"
            )
        self.do_resize = do_resize
        self.size = size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisor = size_divisor
        self.max_image_pixels = max_image_pixels
        self.guided_filter_radius = guided_filter_radius
        self.guided_filter_eps = guided_filter_eps
        self.guided_filter_temperature = guided_filter_temperature

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> DynamiteImageProcessor:
        """The processor of a `DynamiteConfig.from_preset` model: the original's test-time resize for the released
        models, shortest edge 448 (longest 747) for the CPU preset `mobilenet_v2`."""
        from .configuration_dynamite import PRESETS

        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {PRESETS}")
        return cls(**{"size": PRESET_SIZES.get(name), **kwargs})

    # -- images in ----------------------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` after the resize, computed as detectron2's `ResizeShortestEdge`."""
        if not self.do_resize:
            return height, width
        short, longest = self.size["shortest_edge"], self.size["longest_edge"]
        scale = short / min(height, width)
        new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
        if max(new_height, new_width) > longest:
            scale = longest / max(new_height, new_width)
            new_height, new_width = new_height * scale, new_width * scale
        return int(new_height + 0.5), int(new_width + 0.5)

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Load, resize, normalise and pad images into one batch.

        Returns:
            `BatchFeature` with `pixel_values` `(batch, 3, Hp, Wp)` float32 (the batch padded to its largest image,
            then to a multiple of `size_divisor`), `original_sizes` `(batch, 2)` and `reshaped_input_sizes`
            `(batch, 2)` (the resized images inside the padding), both `(height, width)` int64.
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
            load_image(image, self.max_image_pixels, "images" if single else f"images[{i}]")
            for i, image in enumerate(images)
        ]
        resized = [self._resize(array) for array in arrays]
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        divisor = self.size_divisor
        height = -(-max(r.shape[0] for r in resized) // divisor) * divisor
        width = -(-max(r.shape[1] for r in resized) // divisor) * divisor
        pixel_values = torch.zeros(len(resized), 3, height, width)
        for index, array in enumerate(resized):
            normalised = (torch.tensor(array).permute(2, 0, 1).float() - mean) / std
            pixel_values[index, :, : array.shape[0], : array.shape[1]] = normalised
        return BatchFeature(
            {
                "pixel_values": pixel_values,
                "original_sizes": torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long),
                "reshaped_input_sizes": torch.tensor([r.shape[:2] for r in resized], dtype=torch.long),
            }
        )

    def _resize(self, image: np.ndarray) -> np.ndarray:
        height, width = self.resized_size(*image.shape[:2])
        if (height, width) == image.shape[:2]:
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    # -- masks out ----------------------------------------------------------------------------------------------
    def boundary_refiner(self, image: ImageLike, reshaped_input_size: tuple[int, int]) -> BoundaryRefiner:
        """The boundary refinement of one image (its guided filters, kept for the next click), for
        `post_process_masks(..., refiners=[...])`; needs a positive `guided_filter_radius`."""
        if self.guided_filter_radius <= 0:
            raise ValueError(
                "boundary refinement needs a positive guided_filter_radius in the image processor's configuration "
                f"(preprocessor_config.json), which has {self.guided_filter_radius!r}"
            )
        return BoundaryRefiner(
            load_image(image, self.max_image_pixels),
            tuple(reshaped_input_size),
            self.guided_filter_radius,
            self.guided_filter_eps,
            self.guided_filter_temperature,
        )

    def post_process_masks(
        self,
        pred_masks: Tensor,
        query_labels: Tensor,
        original_sizes: Tensor | Sequence[tuple[int, int]],
        reshaped_input_sizes: Tensor | Sequence[tuple[int, int]],
        output_sizes: Tensor | Sequence[tuple[int, int]] | None = None,
        refine_boundaries: bool | None = None,
        images: Sequence[ImageLike] | None = None,
        refiners: Sequence[BoundaryRefiner] | None = None,
        preview: bool = False,
        return_masks: bool = True,
        return_scores: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Per-query logits -> each image's instance masks, scores and label map (spec section 1.5).

        Each query's logits are upsampled to the padded size, cropped to the resized image and resized to the
        output size; an instance's logits are the max over its queries; each pixel goes to the highest instance,
        or to the background where a background query is strictly higher (ties to the lower instance).

        Args:
            pred_masks: `(batch, num_queries, Hp / 4, Wp / 4)`, the model's `pred_masks`.
            query_labels: `(batch, num_queries)`, the model's `query_labels` (instance `k >= 1`, 0 background).
            original_sizes, reshaped_input_sizes: `(batch, 2)` `(height, width)`, as the processor returned them.
            output_sizes: `(batch, 2)` sizes of the results (default: the original sizes).
            refine_boundaries: snap the mask boundaries to the image's edges with the guided filter
                (`guided_filter_radius`). Default: on when the radius is positive (the bundled CPU model's
                processor), off otherwise (the released models: masks are then the original's).
            images: the images (as given to the processor), needed to refine unless `refiners` are given.
            refiners: per image, a `boundary_refiner(...)` kept from an earlier call (its filters are reused).
            preview: for drawing, about twice as fast at display sizes: each instance's logits are fused at the
                model's resolution (with refinement: at half of it) and only those are resized, not every query's.
                Boundaries differ from the exact masks at a few pixels per million (with refinement: by about a
                pixel of the model's resolution); export without it.
            return_masks, return_scores: include `masks` / `scores` in the results (a click that only draws its
                label map, as the predictor's, skips both).

        Returns:
            Per image a dict: `masks` `(N, H, W)` bool, non-overlapping; `label_map` `(H, W)` int64 (0 background,
            `k` instance `k`); `scores` `(N,)` float32, the mean over each instance's mask of its probability
            (the sigmoid of its logits, or the refined probability; 0 for an empty mask).
        """
        # Masks and scores end no graph: logits of a call outside `torch.no_grad()` are taken as values (the
        # refinement writes into preallocated tensors, which autograd refuses).
        pred_masks = pred_masks.detach()
        original_sizes = _sizes(original_sizes, "original_sizes")
        reshaped_input_sizes = _sizes(reshaped_input_sizes, "reshaped_input_sizes")
        output_sizes = original_sizes if output_sizes is None else _sizes(output_sizes, "output_sizes")
        batch = pred_masks.shape[0]
        if not len(original_sizes) == len(reshaped_input_sizes) == len(output_sizes) == batch:
            raise ValueError(
                f"original_sizes, reshaped_input_sizes and output_sizes need one entry per image ({batch})"
            )
        if query_labels.shape != pred_masks.shape[:2]:
            raise ValueError(f"query_labels must be (batch, num_queries) = {tuple(pred_masks.shape[:2])}")
        if refine_boundaries is None:
            refine_boundaries = self.guided_filter_radius > 0
        if refine_boundaries and refiners is None:
            if images is None:
                raise ValueError("refine_boundaries needs the images (or refiners from boundary_refiner)")
            refiners = [self.boundary_refiner(image, size) for image, size in zip(images, reshaped_input_sizes)]
        padded_size = (4 * pred_masks.shape[-2], 4 * pred_masks.shape[-1])
        results = []
        for index in range(batch):
            labels = query_labels[index]
            num_instances = int(labels.max())
            missing = (torch.bincount(labels.clamp(min=0), minlength=num_instances + 1)[1:] == 0).nonzero()[:, 0]
            if len(missing):
                raise ValueError(
                    f"query_labels[{index}]: instances 1..{num_instances} each need a query; instance(s) "
                    f"{(missing + 1).tolist()} have none"
                )
            image_size, output_size = reshaped_input_sizes[index], output_sizes[index]
            if refine_boundaries:
                grouped = self._fused_at_model_resolution(
                    pred_masks[index], labels, num_instances, padded_size, image_size, preview
                )
                refiner = refiners[index]
                probabilities = refiner(refiner.probabilities(grouped, num_instances), output_size, preview)
                label_map, own = _label_and_best(probabilities)
                _background_where_higher(label_map, own, 1.0 - probabilities.sum(0))
            else:
                if preview:
                    grouped = self._fused_at_model_resolution(
                        pred_masks[index], labels, num_instances, padded_size, image_size, False
                    )
                    grouped = F.interpolate(grouped[None], size=output_size, mode="bilinear", align_corners=False)[0]
                    label_map, own = _label_and_best(grouped[:num_instances])
                    background = grouped[num_instances] if grouped.shape[0] > num_instances else None
                else:
                    groups = _resized_fused_groups(
                        pred_masks[index], labels, num_instances, padded_size, image_size, output_size
                    )
                    label_map, own = _label_and_best(itertools.islice(groups, num_instances))
                    background = next(groups, None)
                if background is not None:
                    _background_where_higher(label_map, own, background)
            result = {}
            if return_masks:
                instances = torch.arange(1, num_instances + 1, dtype=label_map.dtype, device=label_map.device)
                result["masks"] = label_map[None] == instances[:, None, None]
            result["label_map"] = label_map.long()
            if return_scores:
                # Each pixel's probability of its own instance (the refined probability, or the sigmoid of its
                # logits), summed per instance over its mask.
                if not refine_boundaries:
                    own = own.sigmoid_()
                flat_labels = label_map.flatten()
                sums = _sums_per_label(flat_labels, own.flatten(), num_instances + 1)
                areas = torch.bincount(flat_labels, minlength=num_instances + 1)
                result["scores"] = (sums[1:] / areas[1:].clamp(min=1)).float()
            results.append(result)
        return results

    @staticmethod
    def _fused_at_model_resolution(
        query_logits: Tensor,
        query_labels: Tensor,
        num_instances: int,
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        half: bool,
    ) -> Tensor:
        """Each instance's logits and the background's (if any query is background), `(num_instances [+ 1], h,
        w)`, at the resized image's size (or half of it: the stride-4 logits upsampled 2x, not 4x)."""
        if half:
            padded_size = ((padded_size[0] + 1) // 2, (padded_size[1] + 1) // 2)
            image_size = ((image_size[0] + 1) // 2, (image_size[1] + 1) // 2)
        logits = resize_logits(query_logits, padded_size, image_size, image_size)
        instances, background = fuse_queries(logits, query_labels, num_instances)
        return instances if background is None else torch.cat((instances, background[None]))


def _sizes(sizes: Tensor | Sequence[tuple[int, int]], argument: str) -> list[tuple[int, int]]:
    values = sizes.tolist() if isinstance(sizes, (Tensor, np.ndarray)) else list(sizes)
    if not all(len(size) == 2 for size in values):
        raise ValueError(f"{argument} must be (height, width) pairs, got {sizes!r}")
    return [(int(size[0]), int(size[1])) for size in values]


__all__ = ["DynamiteImageProcessor", "fuse_queries", "label_instances", "load_image", "resize_logits"]
