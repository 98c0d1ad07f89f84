"""The training pipeline learns to follow clicks (a regression guard for click learning).

A small run of `scripts/benchmark_click_learning.py`: generated images of 2-5 shapes cut from one texture on a
background of another, so only the click can say which shape is meant. After 4,000 samples at 160 px (500 steps,
two processes of one thread, batch 4 each; about 10 minutes on a quiet 2-core machine), one click per shape as a
new instance must give each shape its own instance. Figures below: non-empty instances, instances holding their
own click, mIoU.

The budget. At 2,400 samples (300 steps, as this test ran before) the run ends in the middle of learning it, and
the outcome hung on float rounding and on the seed: the test's seed gave 96 % / 80 % / 0.57, then 77 % / 61 % /
0.32 after a change to training equal up to rounding, and 99 % / 90 % / 0.66 without it; seeds 1 and 2 gave
97 % / 91 % / 0.64 and 74 % / 51 % / 0.32 (with a click-loss weight of 50, seeds 2 and 3: 100 % / 90 % / 0.62 and
86 % / 61 % / 0.34). At 4,000 samples, seeds 2 and 3: 91 % / 86 % / 0.64 and 94 % / 84 % / 0.65, the test's
seed 94 % / 87 % / 0.69. The bundled saliency model of before: 30 % / 28 % / 0.11. A pipeline that loses the
click (queries sampled at the wrong place, click positions dropped, targets that ignore the click) gives about
one instance in k its own click.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_click_learning.py"


@pytest.mark.slow
def test_a_short_run_learns_to_give_each_clicked_shape_its_own_instance(tmp_path) -> None:
    load_script(SCRIPT).main(
        ["--output", str(tmp_path), "--train-images", "600", "--test-images", "20", "--image-size", "160"]
        + ["--crop-size", "160", "--test-short-edge", "160", "--steps", "500", "--batch-size", "8"]
        + ["--processes", "2", "--learning-rate", "1e-3"]
        + ["--trainer-args", "--num-points 2048 --max-num-interactions 0 --click-loss-radius 2"]
    )
    report = json.loads((tmp_path / "report.json").read_text())["trained"]
    separation = report["one_click_per_shape"]
    assert report["objects"] >= 50
    assert separation["non_empty_instances"] >= 0.9, report
    assert separation["instances_containing_click"] >= 0.65, report
    assert separation["mIoU"] >= 0.35, report
