"""Simulated clicks for training (spec sections 2.1 and 2.2): the random initial clicks of the mapper and the
random corrective clicks of the iterative passes.

These are the *training* rules (random draws from distance-transform bands); the evaluation's deterministic
next-click rule lives in `dynamite_hf.evaluation.clicker`, whose distance transform both use.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion

from ..clicks import Click
from ..evaluation.clicker import distance_transform

_EROSION = np.ones((3, 3), dtype=bool)


def _geometric_count(rng: np.random.Generator, largest: int, ratio: float = 0.7) -> int:
    """k in 0..largest with p proportional to ratio**k."""
    weights = ratio ** np.arange(largest + 1)
    return int(rng.choice(largest + 1, p=weights / weights.sum()))


def _pick(rng: np.random.Generator, region: np.ndarray, count: int) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(region)
    if count <= 0 or len(rows) == 0:
        return []
    chosen = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return [(int(rows[i]), int(cols[i])) for i in chosen]


def initial_clicks(
    instance_map: np.ndarray,
    padding_mask: np.ndarray,
    rng: np.random.Generator,
    max_extra_positive: int = 5,
    max_negative: int = 6,
    no_negative_probability: float = 0.2,
) -> list[Click]:
    """The mapper's first clicks, in the model frame (pixel indices of the crop).

    Per instance: one click drawn among the pixels whose distance transform exceeds max / 1.7, then k extra
    clicks (k in 0..5, p ~ 0.7^k, capped at half the eroded pixel count) drawn from the 3x3-eroded mask.
    Background: none with p 0.2, else k in 0..6 clicks (p ~ 0.7^k) from the eroded non-instance, non-padding
    area. Timestamps count over the instances' clicks in order, then the background clicks.
    """
    clicks: list[Click] = []
    for index in range(int(instance_map.max())):
        mask = instance_map == index + 1
        distances = distance_transform(mask)
        centre = _pick(rng, distances > distances.max() / 1.7, 1)
        eroded = binary_erosion(mask, _EROSION)
        extra = min(_geometric_count(rng, max_extra_positive), int(eroded.sum()) // 2)
        for row, col in centre + _pick(rng, eroded, extra):
            clicks.append(Click(index, float(row), float(col), len(clicks), frame="model"))
    if rng.random() >= no_negative_probability:
        background = binary_erosion(~(padding_mask | (instance_map > 0)), _EROSION)
        for row, col in _pick(rng, background, _geometric_count(rng, max_negative)):
            clicks.append(Click(None, float(row), float(col), len(clicks), frame="model"))
    return clicks


def corrective_clicks(
    instance_map: np.ndarray,
    padding_mask: np.ndarray,
    predicted_map: np.ndarray,
    next_timestamp: int,
    rng: np.random.Generator,
    iou_threshold: float = 0.90,
    max_instances: int = 15,
) -> list[Click]:
    """Corrective clicks from a prediction (spec 2.2): among the `max_instances` lowest-IoU instances, each
    with IoU < `iou_threshold` gets 1 click (p 0.8) or 2 (p 0.2), drawn from the error region (false negatives
    or false positives, padding excluded) with the larger distance-transform maximum, among its pixels beyond
    half that maximum. The owner is read from the ground truth (another instance, or background).

    Args:
        instance_map: `(S, S)` ground truth, k + 1 = instance k.
        predicted_map: `(S, S)` predicted label map in the same numbering (0 = background).
        next_timestamp: the timestamp of the first new click.
    """
    num_instances = int(instance_map.max())
    valid = ~padding_mask
    ious = []
    for index in range(num_instances):
        gt, pred = instance_map == index + 1, (predicted_map == index + 1) & valid
        union = np.count_nonzero(gt | pred)
        ious.append(np.count_nonzero(gt & pred) / union if union else 1.0)
    worst = sorted(range(num_instances), key=lambda i: ious[i])[:max_instances]
    clicks: list[Click] = []
    for index in worst:
        if ious[index] >= iou_threshold:
            continue
        gt, pred = instance_map == index + 1, predicted_map == index + 1
        false_negative = distance_transform(gt & ~pred & valid)
        false_positive = distance_transform(~gt & pred & valid)
        distances = false_negative if false_negative.max() > false_positive.max() else false_positive
        if distances.max() <= 0:
            continue
        count = 1 if rng.random() < 0.8 else 2
        for row, col in _pick(rng, distances > distances.max() / 2, count):
            owner = int(instance_map[row, col]) - 1
            instance = None if owner < 0 else owner
            clicks.append(Click(instance, float(row), float(col), next_timestamp + len(clicks), frame="model"))
    return clicks
