"""The click-obedience report tells a click-following segmenter from a saliency detector that a click switches on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate_script import evaluate_main

from dynamite_hf.clicks import Click
from dynamite_hf.data.benchmarks import EvaluationSample
from dynamite_hf.evaluation.obedience import (
    ClickBlindSegmenter,
    evaluate_instance_separation,
    evaluate_obedience,
    evaluate_single_click_choice,
    obedience_metrics,
    separation_metrics,
    single_click_metrics,
)


def three_objects() -> EvaluationSample:
    """Three 10x10 squares on a 40x80 image."""
    instance_map = np.zeros((40, 80), dtype=np.int32)
    for k in range(3):
        instance_map[15:25, 5 + 25 * k : 15 + 25 * k] = k + 1
    return EvaluationSample("three", None, instance_map)


def one_object() -> EvaluationSample:
    """A 20x30 rectangle: the first click's disk leaves most of it unsegmented, so positive clicks follow."""
    instance_map = np.zeros((40, 60), dtype=np.int32)
    instance_map[10:30, 10:40] = 1
    return EvaluationSample("one", None, instance_map)


class ClickFollower:
    """Each instance is the union of 4-px disks around its clicks, minus disks around background clicks; later
    clicks win. Every click is obeyed by construction."""

    def start(self, sample: EvaluationSample) -> None:
        self.shape = sample.instance_map.shape

    def predict(self, clicks: list[Click]) -> np.ndarray:
        rows, cols = np.mgrid[: self.shape[0], : self.shape[1]]
        count = 1 + max((c.instance for c in clicks if c.instance is not None), default=-1)
        label = np.zeros(self.shape, dtype=np.int32)
        for click in clicks:
            disk = (rows - click.row) ** 2 + (cols - click.col) ** 2 <= 16
            label[disk] = 0 if click.instance is None else click.instance + 1
        return label[None] == np.arange(1, count + 1)[:, None, None]


class SaliencyDetector:
    """Every instance gets all objects (the most recent instance owns them): where the click is does not matter."""

    def start(self, sample: EvaluationSample) -> None:
        self.salient = sample.instance_map > 0

    def predict(self, clicks: list[Click]) -> np.ndarray:
        count = 1 + max((c.instance for c in clicks if c.instance is not None), default=-1)
        masks = np.zeros((count, *self.salient.shape), dtype=bool)
        masks[count - 1] = self.salient
        return masks


class ShiftedSaliency(SaliencyDetector):
    """The object shifted right by 6 px: a fixed mask that corrective clicks cannot move."""

    def start(self, sample: EvaluationSample) -> None:
        self.salient = np.roll(sample.instance_map > 0, 6, axis=1)


def test_a_click_follower_obeys_every_click() -> None:
    metrics = obedience_metrics(evaluate_obedience(ClickFollower(), [one_object()], num_clicks=6, progress=False))
    assert metrics["positive_clicks"] >= 1
    assert metrics["first_click_obeyed"] == 1.0 and metrics["positive_obeyed"] == 1.0
    assert np.isnan(metrics["negative_obeyed"]) or metrics["negative_obeyed"] == 1.0
    assert metrics["mIoU_per_click"][-1] > metrics["mIoU_per_click"][0]
    separation = separation_metrics(evaluate_instance_separation(ClickFollower(), [three_objects()], progress=False))
    assert separation == {**separation, "objects": 3, "empty_instances": 0.0, "instances_containing_click": 1.0}


def test_a_saliency_detector_fails_obedience() -> None:
    result = evaluate_obedience(ShiftedSaliency(), [one_object()], num_clicks=5, progress=False)
    metrics = obedience_metrics(result)
    # Corrective clicks land in the errors of a mask that never moves, so none is obeyed and IoU never changes.
    assert metrics["positive_obeyed"] == 0.0 or np.isnan(metrics["positive_obeyed"])
    assert metrics["negative_obeyed"] == 0.0 or np.isnan(metrics["negative_obeyed"])
    assert metrics["positive_clicks"] + metrics["negative_clicks"] == 4
    assert metrics["unchanged_clicks"] == 1.0
    separation = separation_metrics(evaluate_instance_separation(SaliencyDetector(), [three_objects()], progress=False))
    assert separation["empty_instances"] == pytest.approx(2 / 3)
    assert separation["instances_containing_click"] == pytest.approx(1 / 3)
    single = single_click_metrics(evaluate_single_click_choice(SaliencyDetector(), [three_objects()], progress=False))
    assert single["saliency_like"] == 1.0 and single["mIoU"] == pytest.approx(1 / 3)
    follower = single_click_metrics(evaluate_single_click_choice(ClickFollower(), [three_objects()], progress=False))
    assert follower["saliency_like"] == 0.0


def two_objects() -> EvaluationSample:
    """Two 10x10 squares on a 30x50 image (with `three_objects`: 5 objects on 2 images)."""
    instance_map = np.zeros((30, 50), dtype=np.int32)
    instance_map[5:15, 4:14], instance_map[12:22, 30:40] = 1, 2
    return EvaluationSample("two", None, instance_map)


def test_no_click_blind_segmenter_passes_the_click_blind_ceiling() -> None:
    samples = [three_objects(), two_objects()]

    def single(segmenter) -> dict:
        return single_click_metrics(evaluate_single_click_choice(segmenter, samples, progress=False))

    # 2 images, 5 objects: one mask per image whichever object is clicked scores at most 2 / 5 on average.
    saliency = single(SaliencyDetector())
    assert saliency["click_blind_ceiling"] == pytest.approx(2 / 5)
    assert saliency["mIoU"] == pytest.approx(saliency["click_blind_ceiling"])  # all objects: the ceiling exactly
    follower = single(ClickFollower())
    assert follower["mIoU"] > 0.45 > follower["click_blind_ceiling"]
    # The same segmenter with every click moved to the image centre.
    deaf = single(ClickBlindSegmenter(ClickFollower()))
    assert deaf["mIoU"] <= deaf["click_blind_ceiling"] == pytest.approx(2 / 5)


class FixedMask:
    """One random mask per image (half the pixels of a random box), wherever the click is."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def start(self, sample: EvaluationSample) -> None:
        height, width = sample.instance_map.shape
        top, left = self.rng.integers(0, height // 2), self.rng.integers(0, width // 2)
        self.mask = np.zeros((height, width), dtype=bool)
        self.mask[top : top + height // 2, left : left + width // 2] = self.rng.random((height // 2, width // 2)) < 0.5

    def predict(self, clicks: list[Click]) -> np.ndarray:
        return self.mask[None]


@pytest.mark.parametrize("seed", range(5))
def test_any_fixed_mask_stays_within_the_click_blind_ceiling(seed) -> None:
    samples = [three_objects(), two_objects()]
    metrics = single_click_metrics(evaluate_single_click_choice(FixedMask(seed), samples, progress=False))
    assert metrics["mIoU"] <= metrics["click_blind_ceiling"] + 1e-9


def test_obedience_metrics_by_hand() -> None:
    from dynamite_hf.evaluation.obedience import ObedienceResult

    result = ObedienceResult(
        ["a", "b"],
        positive=[[True, True, False], [True, False, False]],
        obeyed=[[True, False, True], [True, True, False]],
        ious=[[0.5, 0.5, 0.7], [0.6, 0.9, 0.9]],
    )
    metrics = obedience_metrics(result)
    assert metrics["positive_clicks"] == 1 and metrics["negative_clicks"] == 3
    assert metrics["positive_obeyed"] == 0.0 and metrics["negative_obeyed"] == pytest.approx(2 / 3)
    assert metrics["positive_obeyed_per_click"][0] == 1.0 and metrics["negative_obeyed_per_click"][2] == 0.5
    assert metrics["mean_iou_change_per_click"] == pytest.approx([0.55, 0.15, 0.1])
    assert metrics["unchanged_clicks"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_evaluate_script_writes_the_obedience_report(folder_dataset, mode) -> None:  # noqa: F811
    output = folder_dataset / f"obedience_{mode}"
    evaluate_main(
        ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset / "data")]
        + ["--mode", mode, "--report", "obedience", "--max-clicks", "3", "--output", str(output)]
    )
    results = json.loads((output / "results.json").read_text())
    assert results["report"] == "obedience"
    table = (output / "results.md").read_text()
    if mode == "single":
        assert results["metrics"]["samples"] == 4 and len(results["metrics"]["mIoU_per_click"]) == 3
        assert "positive clicks obeyed" in table
    else:
        assert results["metrics"]["objects"] == 4 and "instances containing their click" in table
