"""The next-click rule of the paper's evaluation (spec section 3), the one implementation of it.

Distances are exact Euclidean transforms (`float32(sqrt(d^2))` with integer `d^2`) of the error regions
zero-padded by one pixel, so the image border counts as boundary and exact ties resolve deterministically to the
first pixel in raster order (the original's float32 OpenCV transform made those ties depend on its version).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from ..clicks import Click

CLICK_RADIUS = 5


def distance_transform(mask: np.ndarray) -> np.ndarray:
    """Exact L2 distance of each pixel of `mask` to the nearest pixel outside it, with the image border counted
    as outside (the mask is zero-padded by 1 px first). float32, `(H, W)`."""
    padded = np.pad(mask.astype(bool), 1)
    return distance_transform_edt(padded)[1:-1, 1:-1].astype(np.float32)


def exclusion_disk(height: int, width: int, row: int, col: int, radius: float = CLICK_RADIUS) -> np.ndarray:
    """Pixels within `radius` (inclusive) of `(row, col)`, `(H, W)` bool."""
    rows, cols = np.ogrid[:height, :width]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def first_maximum(values: np.ndarray) -> tuple[int, int, float]:
    """`(row, col, value)` of the first raster-order pixel attaining the maximum."""
    flat = int(np.argmax(values))
    row, col = divmod(flat, values.shape[1])
    return row, col, float(values[row, col])


class Clicker:
    """Simulated user for one image: initial clicks, then corrective clicks from the errors of a prediction.

    Args:
        instance_map: `(H, W)` int, 0 background, k + 1 = object k (objects already made non-overlapping).
        ignore_masks: `(N, H, W)` bool per object, or None; ignored pixels never receive clicks.
        radius: earlier clicks block a disk of this radius (`sampling_strategy=1` of the original).
        num_objects: the object count when some objects are empty (default: the largest id).
    """

    def __init__(
        self,
        instance_map: np.ndarray,
        ignore_masks: np.ndarray | None = None,
        radius: float = CLICK_RADIUS,
        num_objects: int | None = None,
    ):
        self.instance_map = np.asarray(instance_map)
        self.num_objects = int(self.instance_map.max()) if num_objects is None else num_objects
        self.gt_masks = self.instance_map[None] == np.arange(1, self.num_objects + 1)[:, None, None]
        self.ignore_masks = ignore_masks
        self.radius = radius
        self.not_clicked = np.ones(self.instance_map.shape, dtype=bool)
        self.clicks: list[Click] = []

    def _block(self, row: int, col: int) -> None:
        self.not_clicked &= ~exclusion_disk(*self.instance_map.shape, row, col, self.radius)

    def _allowed(self, index: int) -> np.ndarray:
        if self.ignore_masks is None:
            return np.ones(self.instance_map.shape, dtype=bool)
        return ~self.ignore_masks[index]

    def initial_clicks(self) -> list[Click]:
        """One click per object at the maximum of its (ignore-excluded) distance transform; `t` = object index."""
        for index in range(self.num_objects):
            row, col, _ = first_maximum(distance_transform(self.gt_masks[index] & self._allowed(index)))
            self.clicks.append(Click(index, float(row), float(col), len(self.clicks)))
            self._block(row, col)
        return list(self.clicks)

    def _record(self, row: int, col: int) -> Click:
        owner = int(self.instance_map[row, col]) - 1
        click = Click(None if owner < 0 else owner, float(row), float(col), len(self.clicks))
        self.clicks.append(click)
        self._block(row, col)
        return click

    def next_click(self, index: int, pred_masks: np.ndarray) -> Click:
        """The corrective click for object `index` given the predicted masks `(N, H, W)` bool.

        Positive (inside the false negatives) when their largest distance beats that of the false positives,
        else negative; the owner comes from the ground truth at that pixel, so it may be another object or the
        background. With no error left outside the blocked disks, the original still clicks: at (0, 0).
        """
        allowed = self._allowed(index)
        gt, pred = self.gt_masks[index], pred_masks[index].astype(bool)
        fn = distance_transform(gt & ~pred & allowed) * self.not_clicked
        fp = distance_transform(~gt & pred & allowed) * self.not_clicked
        fn_row, fn_col, fn_max = first_maximum(fn)
        fp_row, fp_col, fp_max = first_maximum(fp)
        return self._record(fn_row, fn_col) if fn_max > fp_max else self._record(fp_row, fp_col)

    def next_click_max_dt(self, pred_masks: np.ndarray) -> Click:
        """`max_dt` strategy: one click at the farthest point of all errors (predicted id map != ground truth).
        The ignore masks are not used, as in the original."""
        predicted = np.zeros(self.instance_map.shape, dtype=np.int64)
        for index, mask in enumerate(pred_masks):
            predicted[mask.astype(bool)] = index + 1
        row, col, _ = first_maximum(distance_transform(predicted != self.instance_map) * self.not_clicked)
        return self._record(row, col)

    def ious(self, pred_masks: np.ndarray) -> list[np.float32]:
        """float32 IoU of each object; pixels ignored for the *first* object are left out for all (the
        original's behaviour; single-object sets have one ignore mask anyway)."""
        keep = self._allowed(0) if self.ignore_masks is not None else np.ones(self.instance_map.shape, dtype=bool)
        values = []
        for gt, pred in zip(self.gt_masks, pred_masks, strict=True):
            pred = pred.astype(bool)
            intersection = np.count_nonzero(gt & pred & keep)
            union = np.count_nonzero((gt | pred) & keep)
            values.append(np.float32(intersection) / np.float32(union) if union else np.float32("nan"))
        return values
