"""The single-instance (NoC) and multi-instance (NCI / NFO / NFI / mIoU) protocols (spec section 3).

A *segmenter* is anything with `start(sample)` (a new image) and `predict(clicks) -> (N, H, W) bool` masks at
the original resolution; `ModelSegmenter` wraps `DynamitePredictor`, tests use oracles.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..clicks import Click
from ..data.benchmarks import EvaluationSample
from .clicker import Clicker

MULTI_INSTANCE_STRATEGIES = ("best", "worst", "random", "round_robin", "wlb", "max_dt")


class Segmenter(Protocol):
    def start(self, sample: EvaluationSample) -> None: ...

    def predict(self, clicks: list[Click]) -> np.ndarray: ...


class ModelSegmenter:
    """A `DynamitePredictor` as a segmenter: the per-image stage in `start`, one prediction per click list."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def start(self, sample: EvaluationSample) -> None:
        self.predictor.set_image(sample.image_path)

    def predict(self, clicks: list[Click]) -> np.ndarray:
        return self.predictor.set_clicks(clicks)


@dataclass
class Timings:
    """Seconds of the first prediction of each image (per-image stage included) and of every later one."""

    first: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)

    def first_prediction(self, segmenter: Segmenter, sample: EvaluationSample, clicks: list[Click]) -> np.ndarray:
        start = time.perf_counter()
        segmenter.start(sample)
        result = segmenter.predict(clicks)
        self.first.append(time.perf_counter() - start)
        return result

    def later_prediction(self, segmenter: Segmenter, clicks: list[Click]) -> np.ndarray:
        start = time.perf_counter()
        result = segmenter.predict(clicks)
        self.later.append(time.perf_counter() - start)
        return result

    def summary(self) -> dict[str, float]:
        mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
        return {"first_click_s": mean(self.first), "later_click_s": mean(self.later)}


# -- single instance ---------------------------------------------------------------------------------------


@dataclass
class SingleInstanceResult:
    sample_ids: list[str]
    ious: list[list[float]]  # per sample, the IoU after each click (it stops once the threshold is met)
    max_clicks: int
    timings: Timings


def evaluate_single_instance(
    segmenter: Segmenter,
    samples: Sequence[EvaluationSample],
    max_clicks: int = 20,
    iou_threshold: float = 0.90,
    progress: bool = True,
) -> SingleInstanceResult:
    """One object per sample: the initial click, then corrective clicks on object 0 until its IoU reaches
    `iou_threshold` or `max_clicks` clicks were made (clicks may land on the background)."""
    threshold = np.float32(iou_threshold)
    result = SingleInstanceResult([], [], max_clicks, Timings())
    for sample in tqdm(samples, desc="single-instance", unit="sample", disable=not progress):
        clicker = Clicker(sample.instance_map, sample.ignore_masks, num_objects=sample.num_objects)
        clicker.initial_clicks()
        prediction = result.timings.first_prediction(segmenter, sample, list(clicker.clicks))
        ious = [float(clicker.ious(prediction)[0])]
        while len(clicker.clicks) < max_clicks and not np.float32(ious[-1]) >= threshold:
            clicker.next_click(0, prediction)
            prediction = result.timings.later_prediction(segmenter, list(clicker.clicks))
            ious.append(float(clicker.ious(prediction)[0]))
        result.sample_ids.append(sample.sample_id)
        result.ious.append(ious)
    return result


def original_rounding(value: float) -> float:
    """The original summary's `np.round(mean, 2)`: half-to-even on the scaled value (5.825 -> 5.82)."""
    return float(np.round(value, 2))


def single_instance_metrics(result: SingleInstanceResult, thresholds: Sequence[float] = (0.85, 0.90)) -> dict:
    """NoC@t (mean 1-based index of the first IoU >= t, else the click cap; exact, with `NoC@t_printed` the
    original's rounded figure), NFO@t (samples never reaching t), IoU@NoC@t (the mean IoU at the click that
    reached t, or after the last click), and the mean IoU after each click (a finished sample keeps its last
    IoU)."""
    metrics: dict = {"samples": len(result.ious)}
    for threshold in thresholds:
        bound = np.float32(threshold)
        counts = [
            next((k + 1 for k, iou in enumerate(ious) if np.float32(iou) >= bound), result.max_clicks)
            for ious in result.ious
        ]
        never = sum(1 for ious in result.ious if not any(np.float32(iou) >= bound for iou in ious))
        at_noc = [ious[min(count, len(ious)) - 1] for count, ious in zip(counts, result.ious, strict=True)]
        name = round(threshold * 100)
        metrics[f"NoC@{name}"] = float(np.mean(counts)) if counts else float("nan")
        metrics[f"NoC@{name}_printed"] = original_rounding(metrics[f"NoC@{name}"])
        metrics[f"NFO@{name}"] = never
        metrics[f"IoU@NoC@{name}"] = float(np.mean(np.array(at_noc, dtype=np.float32))) if at_noc else float("nan")
    curve = np.array([ious + [ious[-1]] * (result.max_clicks - len(ious)) for ious in result.ious], dtype=np.float64)
    metrics["mIoU_per_click"] = curve.mean(0).tolist() if len(curve) else []
    metrics.update(result.timings.summary())
    return metrics


# -- multi instance ----------------------------------------------------------------------------------------


@dataclass
class MultiInstanceResult:
    sample_ids: list[str]
    final_ious: list[list[float]]  # per image, per object, after the last click
    interactions: list[int]  # per image, clicks used (initial ones included)
    iou_threshold: float
    timings: Timings


def _order(ious: list[np.float32], largest: bool) -> list[int]:
    # torch.topk, as the original: not index-stable on equal IoUs, which decides which object is refined.
    return torch.topk(torch.tensor(np.array(ious, dtype=np.float32)), k=len(ious), largest=largest).indices.tolist()


def evaluate_multi_instance(
    segmenter: Segmenter,
    samples: Sequence[EvaluationSample],
    strategy: str = "random",
    iou_threshold: float = 0.85,
    clicks_per_object: int = 10,
    seed_id: int = 0,
    progress: bool = True,
) -> MultiInstanceResult:
    """All objects of an image at once, with a budget of `clicks_per_object` x N clicks (initial ones included);
    each round refines one failing object chosen by `strategy` (see `MULTI_INSTANCE_STRATEGIES`)."""
    if strategy not in MULTI_INSTANCE_STRATEGIES:
        raise ValueError(f"strategy must be one of {MULTI_INSTANCE_STRATEGIES}, got {strategy!r}")
    threshold = np.float32(iou_threshold)
    rng = random.Random(123456 + seed_id)  # seeded once per evaluation: image order matters, as in the original
    result = MultiInstanceResult([], [], [], iou_threshold, Timings())
    for sample in tqdm(samples, desc=f"multi-instance ({strategy})", unit="image", disable=not progress):
        clicker = Clicker(sample.instance_map, sample.ignore_masks, num_objects=sample.num_objects)
        clicker.initial_clicks()
        count = clicker.num_objects
        prediction = result.timings.first_prediction(segmenter, sample, list(clicker.clicks))
        ious = clicker.ious(prediction)
        interactions, budget = count, clicks_per_object * count
        shuffled = list(range(count))
        refined = [1] * count  # clicks aimed at each object (wlb), initial click included
        consecutive, current = [1] * count, -1  # round_robin
        while interactions < budget:
            failing = [not iou >= threshold for iou in ious]  # NaN counts as failing
            if not any(failing):
                break
            target = None
            if strategy in ("best", "worst"):
                target = next((i for i in _order(ious, strategy == "best") if failing[i]), None)
            elif strategy == "random":
                rng.shuffle(shuffled)
                target = next((i for i in shuffled if failing[i]), None)
            elif strategy == "wlb":
                target = next((i for i in _order(ious, False) if failing[i] and refined[i] < clicks_per_object), None)
                if target is None:
                    target = next((i for i in _order(ious, True) if failing[i]), None)
            elif strategy == "round_robin":
                if all(not failing[i] or consecutive[i] >= 10 for i in range(count)):
                    consecutive, current = [0] * count, -1
                if current != -1 and consecutive[current] < 10 and failing[current]:
                    target = current
                    consecutive[current] += 1
                else:
                    rng.shuffle(shuffled)
                    target = next((i for i in shuffled if failing[i] and consecutive[i] < 10), None)
                    if target is not None:
                        kept = consecutive[target] + 1
                        consecutive, current = [0] * count, target
                        consecutive[target] = kept
                if target is None:
                    break
            if strategy == "max_dt":
                clicker.next_click_max_dt(prediction)
            else:
                clicker.next_click(target, prediction)
                refined[target] += 1
            interactions += 1
            prediction = result.timings.later_prediction(segmenter, list(clicker.clicks))
            ious = clicker.ious(prediction)
        result.sample_ids.append(sample.sample_id)
        result.final_ious.append([float(v) for v in ious])
        result.interactions.append(interactions)
    return result


def multi_instance_metrics(result: MultiInstanceResult) -> dict:
    """NCI (mean clicks per object per image), NCI_suc (clicks per *successful* object, the raw click count where
    none succeeded), NFO (objects below the threshold), NFI (images with one), mIoU (mean over images of the mean
    object IoU, summed image by image in float32 as the original's `get_multi_inst_metrices`)."""
    threshold = np.float32(result.iou_threshold)
    failed = [sum(1 for v in ious if not np.float32(v) >= threshold) for ious in result.final_ious]
    pairs = list(zip(result.interactions, result.final_ious, strict=True))
    total = np.float32(0)
    for ious in result.final_ious:
        total = np.float32(total + np.mean(np.array(ious, dtype=np.float32)))
    succeeded = [len(v) - f for v, f in zip(result.final_ious, failed, strict=True)]
    return {
        "images": len(result.final_ious),
        "objects": sum(len(v) for v in result.final_ious),
        "NCI": float(np.mean([n / len(v) for n, v in pairs])),
        "NCI_suc": float(np.mean([n / s if s else n for (n, _), s in zip(pairs, succeeded, strict=True)])),
        "NFO": int(sum(failed)),
        "NFI": int(sum(1 for f in failed if f)),
        "mIoU": float(total / np.float32(len(result.final_ious))) if result.final_ious else float("nan"),
        **result.timings.summary(),
    }
