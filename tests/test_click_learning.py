"""The training pipeline learns to follow clicks (a regression guard for click learning).

A small run of `scripts/benchmark_click_learning.py`: generated images of 2-5 shapes cut from one texture on a
background of another, so only the click can say which shape is meant. After 2,400 samples at 160 px (two
processes of one thread, batch 4 each; about 6-7 minutes on a quiet 2-core machine), one click per shape as a new
instance must give each shape its own instance. Measured with two processes: 96 % non-empty instances, 80 %
containing their own click, mIoU 0.57 (one process with batch 8, as this test ran before: 99 %, 81 %, 0.55; two
processes train 17 % more samples per second at this size, `scripts/benchmark_training.py --crop-size 160
--batch-size 4 --max-num-interactions 0`); the bundled saliency model of before: 30 %, 28 %, 0.11. This is near
the smallest budget that learns it: 1,920 samples (one process) gave 86 %, 67 %, 0.33 (below the asserted 90 %,
65 %, 0.35), 1,600 samples at 128 px 60 %, 27 %, 0.09. A pipeline that loses the click (queries sampled at the
wrong place, click positions dropped, targets that ignore the click) gives about one instance in k its own click.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_click_learning.py"


@pytest.mark.slow
def test_a_short_run_learns_to_give_each_clicked_shape_its_own_instance(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_click_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        ["--output", str(tmp_path), "--train-images", "600", "--test-images", "20", "--image-size", "160"]
        + ["--crop-size", "160", "--test-short-edge", "160", "--steps", "300", "--batch-size", "8"]
        + ["--processes", "2", "--learning-rate", "1e-3"]
        + ["--trainer-args", "--num-points 2048 --max-num-interactions 0 --click-loss-radius 2"]
    )
    report = json.loads((tmp_path / "report.json").read_text())["trained"]
    separation = report["one_click_per_shape"]
    assert report["objects"] >= 50
    assert separation["non_empty_instances"] >= 0.9, report
    assert separation["instances_containing_click"] >= 0.65, report
    assert separation["mIoU"] >= 0.35, report
