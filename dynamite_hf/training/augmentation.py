"""The training mapper's geometry and instance selection (spec section 2.1, steps 1-7).

Horizontal flip, large-scale jitter (`ResizeScale(0.1, 2.0)` to a square target), a fixed-size crop padded
with grey 128 (and a padding mask), then the instance choice: drop what the crop emptied, subsample, paint
smaller objects over larger ones and keep the survivors above a pixel count.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_PAD_VALUE = 128


@dataclass
class AugmentedSample:
    """One training sample after augmentation, at the crop size.

    Attributes:
        image: `(S, S, 3)` uint8 RGB, padding filled with 128.
        padding_mask: `(S, S)` bool, True where the crop padded.
        instance_map: `(S, S)` int32, 0 background, k + 1 = instance k (non-overlapping).
    """

    image: np.ndarray
    padding_mask: np.ndarray
    instance_map: np.ndarray

    @property
    def num_instances(self) -> int:
        return int(self.instance_map.max())


def large_scale_jitter(
    image: np.ndarray,
    masks: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip (p 0.5), resize by a random scale of the square target, crop at a random offset, pad to the target.

    Args:
        image: `(H, W, 3)` uint8.
        masks: `(N, H, W)` bool.

    Returns:
        `(S, S, 3)` image, `(N, S, S)` masks and the `(S, S)` padding mask.
    """
    if flip and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    height, width = image.shape[:2]
    scale = rng.uniform(min_scale, max_scale) * crop_size
    scale = min(scale / height, scale / width)
    new_height, new_width = max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)
    crop_height, crop_width = min(crop_size, new_height), min(crop_size, new_width)
    top = int(round((new_height - crop_height) * rng.uniform()))
    left = int(round((new_width - crop_width) * rng.uniform()))

    resized = cv2.resize(np.ascontiguousarray(image), (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    out_image = np.full((crop_size, crop_size, 3), IMAGE_PAD_VALUE, dtype=np.uint8)
    out_image[:crop_height, :crop_width] = resized[top : top + crop_height, left : left + crop_width]
    out_masks = np.zeros((len(masks), crop_size, crop_size), dtype=bool)
    for index, mask in enumerate(masks):
        scaled = cv2.resize(
            np.ascontiguousarray(mask, dtype=np.uint8), (new_width, new_height), interpolation=cv2.INTER_NEAREST
        )
        out_masks[index, :crop_height, :crop_width] = scaled[top : top + crop_height, left : left + crop_width] > 0
    padding = np.ones((crop_size, crop_size), dtype=bool)
    padding[:crop_height, :crop_width] = False
    return out_image, out_masks, padding


def select_instances(
    masks: np.ndarray,
    areas: np.ndarray,
    rng: np.random.Generator,
    max_instances: int = 30,
    keep_fraction: float = 0.7,
    min_pixels: int = 50,
) -> np.ndarray:
    """Instance map of a random subset (spec 2.1 steps 4-6): drop empty masks, keep 1 if there is one, else
    `min(int(0.7 n), 30)` at random; paint by area (`areas`, original resolution), largest first, so smaller
    objects overwrite larger ones; keep instances of more than `min_pixels` pixels, numbered 1..K in that area
    order (1 = the largest)."""
    present = [i for i in range(len(masks)) if masks[i].any()]
    if len(present) > 1:
        count = max(min(int(keep_fraction * len(present)), max_instances), 1)
        present = sorted(rng.choice(present, size=count, replace=False).tolist())
    # Sorted by area (stable, largest first), painted in that order so smaller objects end up on top, and
    # numbered in that order (instance 1 = the largest), as the original's mapper and evaluator do.
    by_area = sorted(present, key=lambda i: -areas[i])
    painted = np.zeros(masks.shape[1:], dtype=np.int32)
    for index in by_area:
        painted[masks[index]] = index + 1
    instance_map = np.zeros_like(painted)
    kept = 0
    for index in by_area:
        region = painted == index + 1
        if region.sum() > min_pixels:
            kept += 1
            instance_map[region] = kept
    return instance_map


def augment(
    image: np.ndarray,
    masks: np.ndarray,
    areas: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    min_area: int = 400,
    max_instances: int = 30,
    attempts: int = 10,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
) -> AugmentedSample | None:
    """The whole mapper geometry; None when no instance survives `attempts` random crops (or none has more
    than `min_area` pixels at the original resolution)."""
    candidates = areas > min_area
    masks, areas = masks[candidates], areas[candidates]
    if len(masks) == 0:
        return None
    for _ in range(attempts):
        out_image, out_masks, padding = large_scale_jitter(image, masks, crop_size, rng, min_scale, max_scale)
        instance_map = select_instances(out_masks, areas, rng, max_instances)
        if instance_map.any():
            return AugmentedSample(out_image, padding, instance_map)
    return None
