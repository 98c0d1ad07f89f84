"""Click obedience: does each click do what it says? (Not in the original; ours.)

A first-click IoU cannot tell an interactive model from a saliency detector that a click switches on. These
measures can:

- single instance (`evaluate_obedience`): the protocol's clicks (initial click, then the next-click rule on
  the current prediction) for a fixed number of clicks, without stopping at an IoU threshold. After each click,
  a positive click is *obeyed* when its pixel is inside the object's predicted mask, a negative click when its
  pixel is outside it; the IoU change the click caused is recorded too.
- multi instance (`evaluate_instance_separation`): one click per object (the protocol's initial clicks, each a
  new instance); per object, whether its instance came out empty and whether its click pixel carries its own
  instance in the fused prediction.
- each object clicked alone (`evaluate_single_click_choice`): the IoU with that object, and whether the mask also
  took half of another. On images of several disjoint objects, a segmenter that ignores where it is clicked gives
  one mask per image whichever object is clicked, and the IoUs of one mask with disjoint objects sum to at most 1:
  its mean IoU stays within `click_blind_ceiling` (images / objects), whatever the network. `ClickBlindSegmenter`
  makes any segmenter such a control.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from tqdm.auto import tqdm

from ..clicks import Click
from ..data.benchmarks import EvaluationSample
from .clicker import Clicker
from .protocols import Segmenter


def _inside(mask: np.ndarray, click) -> bool:
    return bool(mask[int(round(click.row)), int(round(click.col))])


@dataclass
class ObedienceResult:
    """Per sample and click (index 0 = the first click): the click's sign, whether it was obeyed, the IoU after."""

    sample_ids: list[str] = field(default_factory=list)
    positive: list[list[bool]] = field(default_factory=list)
    obeyed: list[list[bool]] = field(default_factory=list)
    ious: list[list[float]] = field(default_factory=list)


def evaluate_obedience(
    segmenter: Segmenter, samples: Sequence[EvaluationSample], num_clicks: int = 10, progress: bool = True
) -> ObedienceResult:
    """Object 0 of each sample, `num_clicks` protocol clicks (see the module docstring)."""
    result = ObedienceResult()
    for sample in tqdm(samples, desc="obedience", unit="sample", disable=not progress):
        clicker = Clicker(sample.instance_map, sample.ignore_masks, num_objects=sample.num_objects)
        clicker.initial_clicks()
        segmenter.start(sample)
        positive, obeyed, ious = [], [], []
        prediction = None
        for index in range(num_clicks):
            if index:
                clicker.next_click(0, prediction)
            click = clicker.clicks[-1]
            prediction = segmenter.predict(list(clicker.clicks))
            mask = prediction[0] if len(prediction) else np.zeros(sample.instance_map.shape, dtype=bool)
            is_positive = click.instance == 0
            positive.append(is_positive)
            obeyed.append(_inside(mask, click) == is_positive)
            ious.append(float(clicker.ious(prediction)[0]))
        result.sample_ids.append(sample.sample_id)
        result.positive.append(positive)
        result.obeyed.append(obeyed)
        result.ious.append(ious)
    return result


def obedience_metrics(result: ObedienceResult) -> dict:
    """Fractions of corrective clicks (index >= 1) obeyed, positive and negative apart, and per click index;
    the mean IoU after each click and the mean IoU change each click caused."""
    positive = np.array(result.positive, dtype=bool)
    obeyed = np.array(result.obeyed, dtype=bool)
    ious = np.array(result.ious, dtype=np.float64)
    if positive.size == 0:
        return {"samples": 0}
    corrective_positive, corrective_obeyed = positive[:, 1:], obeyed[:, 1:]

    def fraction(selected: np.ndarray) -> float:
        return float(selected.mean()) if selected.size else float("nan")

    changes = np.diff(np.concatenate([np.zeros((len(ious), 1)), ious], 1), axis=1)
    return {
        "samples": len(ious),
        "first_click_obeyed": fraction(obeyed[:, 0]),
        "positive_clicks": int(corrective_positive.sum()),
        "negative_clicks": int((~corrective_positive).sum()),
        "positive_obeyed": fraction(corrective_obeyed[corrective_positive]),
        "negative_obeyed": fraction(corrective_obeyed[~corrective_positive]),
        "unchanged_clicks": fraction(np.abs(changes[:, 1:]) <= 0.005),
        "positive_obeyed_per_click": [fraction(obeyed[positive[:, k], k]) for k in range(positive.shape[1])],
        "negative_obeyed_per_click": [fraction(obeyed[~positive[:, k], k]) for k in range(positive.shape[1])],
        "mIoU_per_click": ious.mean(0).tolist(),
        "mean_iou_change_per_click": changes.mean(0).tolist(),
    }


@dataclass
class SeparationResult:
    """Per image and object: instance empty, click pixel carrying the object's own instance, IoU."""

    sample_ids: list[str] = field(default_factory=list)
    empty: list[list[bool]] = field(default_factory=list)
    owns_click: list[list[bool]] = field(default_factory=list)
    ious: list[list[float]] = field(default_factory=list)


def per_sample(result) -> dict:
    """`{sample_id: {field: value}}` of a result dataclass whose fields other than `sample_ids` are per-sample
    lists (for the JSON report)."""
    names = [f.name for f in fields(result) if f.name != "sample_ids"]
    return {sample_id: {n: getattr(result, n)[i] for n in names} for i, sample_id in enumerate(result.sample_ids)}


def _started_with_initial_clicks(
    segmenter: Segmenter, samples: Sequence[EvaluationSample], description: str, progress: bool
) -> Iterator[tuple[EvaluationSample, Clicker, list]]:
    """Each sample started on the segmenter, with its clicker and the protocol's initial clicks (one per object)."""
    for sample in tqdm(samples, desc=description, unit="image", disable=not progress):
        clicker = Clicker(sample.instance_map, sample.ignore_masks, num_objects=sample.num_objects)
        clicks = clicker.initial_clicks()
        segmenter.start(sample)
        yield sample, clicker, clicks


def evaluate_instance_separation(
    segmenter: Segmenter, samples: Sequence[EvaluationSample], progress: bool = True
) -> SeparationResult:
    """One click per object, each a new instance (the multi-instance protocol's initial clicks)."""
    result = SeparationResult()
    for sample, clicker, clicks in _started_with_initial_clicks(segmenter, samples, "instance separation", progress):
        prediction = segmenter.predict(list(clicks))
        result.sample_ids.append(sample.sample_id)
        result.empty.append([not prediction[k].any() for k in range(clicker.num_objects)])
        result.owns_click.append([_inside(prediction[click.instance], click) for click in clicks])
        result.ious.append([float(v) for v in clicker.ious(prediction)])
    return result


def separation_metrics(result: SeparationResult) -> dict:
    empty = [v for image in result.empty for v in image]
    owns = [v for image in result.owns_click for v in image]
    ious = [v for image in result.ious for v in image]
    return {
        "images": len(result.empty),
        "objects": len(empty),
        "empty_instances": float(np.mean(empty)) if empty else float("nan"),
        "instances_containing_click": float(np.mean(owns)) if owns else float("nan"),
        "mIoU": float(np.mean(ious)) if ious else float("nan"),
    }


@dataclass
class SingleClickResult:
    """Per image and object, clicked alone (one click at its centre, one instance): the IoU with that object,
    and whether the mask also took at least half of another object ("saliency-like")."""

    sample_ids: list[str] = field(default_factory=list)
    ious: list[list[float]] = field(default_factory=list)
    spills: list[list[bool]] = field(default_factory=list)


def evaluate_single_click_choice(
    segmenter: Segmenter, samples: Sequence[EvaluationSample], progress: bool = True
) -> SingleClickResult:
    """Each object of each multi-object image clicked on its own: does one click pick that object and no other?"""
    result = SingleClickResult()
    for sample, clicker, clicks in _started_with_initial_clicks(segmenter, samples, "single-click choice", progress):
        ious, spills = [], []
        for click in clicks:
            mask = segmenter.predict([replace(click, instance=0, timestamp=0)])[0]
            target = clicker.gt_masks[click.instance]
            union = np.count_nonzero(mask | target)
            ious.append(float(np.count_nonzero(mask & target) / union) if union else float("nan"))
            others = [g for k, g in enumerate(clicker.gt_masks) if k != click.instance and g.any()]
            spills.append(any(np.count_nonzero(mask & g) >= 0.5 * np.count_nonzero(g) for g in others))
        result.sample_ids.append(sample.sample_id)
        result.ious.append(ious)
        result.spills.append(spills)
    return result


def single_click_metrics(result: SingleClickResult) -> dict:
    """The mean IoU and the saliency-like share over every object, and `click_blind_ceiling`: the highest mean
    IoU a segmenter that ignores where it is clicked can reach on these images (see the module docstring; objects
    whose IoU is undefined, an empty object and an empty mask, are left out of both)."""
    ious = [v for image in result.ious for v in image]
    spills = [v for image in result.spills for v in image]
    counted = [sum(not np.isnan(v) for v in image) for image in result.ious]
    return {
        "objects": len(ious),
        "mIoU": float(np.nanmean(ious)) if ious else float("nan"),
        "saliency_like": float(np.mean(spills)) if spills else float("nan"),
        "click_blind_ceiling": sum(n > 0 for n in counted) / sum(counted) if sum(counted) else float("nan"),
    }


class ClickBlindSegmenter:
    """`segmenter` made deaf to where it is clicked: every click moved to the centre pixel of the image, its sign,
    instance and order kept. The control of the measures above: the same network, unable to follow a click, so
    its single-click mIoU stays within `click_blind_ceiling`."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.centre_row_col = (0.0, 0.0)

    def start(self, sample: EvaluationSample) -> None:
        height, width = sample.instance_map.shape
        self.centre_row_col = (float(height // 2), float(width // 2))
        self.segmenter.start(sample)

    def predict(self, clicks: list[Click]) -> np.ndarray:
        row, col = self.centre_row_col
        return self.segmenter.predict([replace(click, row=row, col=col) for click in clicks])
