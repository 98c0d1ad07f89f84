"""The bundled default model: small safetensors loaded offline by from_pretrained and by the app, trained (it
segments real benchmark objects from one click), and its training command re-runs from the same state."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dynamite_hf import DynamiteModel, DynamitePredictor
from dynamite_hf.data.benchmarks import read_dataset
from dynamite_hf.evaluation import Clicker

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "dynamite-mobilenet-v2"
DATA = ROOT.parent / "shared" / "data"


def test_the_bundled_weights_are_small_safetensors_loaded_offline() -> None:
    weights = BUNDLED / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 40 * 2**20
    model = DynamiteModel.from_pretrained(BUNDLED)
    assert model.config.backbone_type == "mobilenet_v2" and not model.training
    assert (BUNDLED / "README.md").is_file() and (BUNDLED / "preprocessor_config.json").is_file()


def test_the_app_loads_the_bundled_model_by_default(monkeypatch) -> None:
    from dynamite_hf.app.gradio_app import load_app_model

    monkeypatch.delenv("DYNAMITE_MODEL", raising=False)
    model, processor, label = load_app_model(None)
    assert label == "bundled dynamite-mobilenet-v2"
    assert isinstance(model, DynamiteModel)
    # Its preprocessing and boundary refinement come from the folder's preprocessor_config.json.
    assert processor.image_processor.size == {"shortest_edge": 448, "longest_edge": 747}
    assert processor.image_processor.guided_filter_radius == 8


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "GrabCut").is_dir(), reason="../shared/data/GrabCut is not present")
def test_the_bundled_model_segments_grabcut_objects_from_one_click() -> None:
    """Mean IoU after the protocol's first click on the first ten GrabCut objects (the untrained head of the CPU
    preset: 0.06)."""
    predictor = DynamitePredictor(DynamiteModel.from_pretrained(BUNDLED))
    ious = []
    for sample in read_dataset("grabcut", DATA / "GrabCut")[:10]:
        clicker = Clicker(sample.instance_map, sample.ignore_masks)
        predictor.set_image(sample.image_path)
        predictor.set_clicks(clicker.initial_clicks())
        ious.append(float(clicker.ious(predictor.masks)[0]))
    assert np.mean(ious) > 0.6, ious


@pytest.fixture(scope="module")
def bundled_segmenter():
    from dynamite_hf.evaluation.protocols import ModelSegmenter

    return ModelSegmenter(DynamitePredictor(DynamiteModel.from_pretrained(BUNDLED)))


@pytest.mark.skipif(not (DATA / "DAVIS").is_dir(), reason="../shared/data/DAVIS is not present")
def test_one_click_per_object_gives_each_object_its_own_instance(bundled_segmenter) -> None:
    """Ten DAVIS frames with 2-4 objects (24 objects), one click at each object's centre as a new instance: a
    saliency detector gives one mask to the last instance (the others come out empty and lose their click).
    Measured (stages 11 and 13: 22 of 24; stage 16, the average of stages 16 and 18, stage 22 and the bundled
    average of stages 22 and 24, with the boundary refinement: 23 of 24): no empty instance, 22 or 23 of 24 instances hold their own click (the
    stage-1 model, a saliency detector: 57 % empty, 39 % holding their click over all 133 multi-object frames). The
    issue's target: 90 %."""
    from dynamite_hf.evaluation.obedience import evaluate_instance_separation, separation_metrics

    samples = [s for s in read_dataset("davis", DATA / "DAVIS", mode="multi") if s.num_objects >= 2][:10]
    metrics = separation_metrics(evaluate_instance_separation(bundled_segmenter, samples, progress=False))
    assert metrics["objects"] >= 20
    assert metrics["empty_instances"] <= 0.05, metrics
    assert metrics["instances_containing_click"] >= 0.9, metrics


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "GrabCut").is_dir(), reason="../shared/data/GrabCut is not present")
def test_corrective_clicks_are_obeyed_and_improve_the_mask(bundled_segmenter) -> None:
    """GrabCut, the protocol's clicks 2-5 on every object: a positive click's pixel should end up inside the
    mask and a negative click's outside it, and the mask should improve; a model that ignores corrective clicks
    keeps its first mask. Measured (the bundled average of stages 22 and 24, with its boundary refinement): 96 % of
    99 positive and 97 % of 101 negative clicks obeyed, mean IoU 0.803 after click 1 and 0.932 after click 5 (stage
    22: 98 % of 101, 96 % of 99, 0.799 and 0.921; the average of stages 16 and 18: 96 % of 112, 99 % of 88, 0.790 and 0.924; stage 16: 97 % of 118, 100 % of 82, 0.785 and 0.926; stage
    13: 97 % of 132, 100 % of 68, 0.742 and 0.918; stage 13 without the refinement: 98 % of 123, 99 % of 77, 0.739
    and 0.911; the stage-1 model: 2 % and 3 % over clicks 2-10, and its IoU fell from 0.728 to 0.696). Asserted:
    the issue's targets, 80 % each and +0.1 IoU."""
    from dynamite_hf.evaluation.obedience import evaluate_obedience, obedience_metrics

    samples = read_dataset("grabcut", DATA / "GrabCut")
    metrics = obedience_metrics(evaluate_obedience(bundled_segmenter, samples, num_clicks=5, progress=False))
    assert metrics["positive_obeyed"] >= 0.8, metrics
    assert metrics["negative_obeyed"] >= 0.8, metrics
    assert metrics["mIoU_per_click"][4] >= metrics["mIoU_per_click"][0] + 0.1, metrics["mIoU_per_click"]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "DAVIS").is_dir(), reason="../shared/data/DAVIS is not present")
def test_the_bundled_model_snaps_mask_boundaries_to_the_photo(bundled_segmenter) -> None:
    """The bundled config turns on the guided-filter refinement (`dynamite_hf.models.dynamite.refinement`). On the first eight
    DAVIS frames, after the protocol's 10 clicks (made on the refined masks), the refined masks are closer to the
    ground truth than the same clicks' masks without it. Measured (the bundled average of stages 22 and 24): mean
    IoU 0.939 against 0.910 (stage 22: 0.936 against 0.908; the average of stages 16 and 18: 0.943 against 0.905; stage 16: 0.927 against 0.890; stage 13: 0.935
    against 0.897); a refinement that does nothing fails. Over all 345 frames it lowers DAVIS NoC@90 (see the model
    card)."""
    predictor = bundled_segmenter.predictor
    assert predictor.refine_boundaries and predictor.processor.image_processor.guided_filter_radius > 0
    plain = DynamitePredictor(predictor.model, predictor.processor, refine_boundaries=False)
    refined_ious, plain_ious = [], []
    for sample in read_dataset("davis", DATA / "DAVIS")[:8]:
        clicker = Clicker(sample.instance_map, sample.ignore_masks)
        predictor.set_image(sample.image_path)
        masks = predictor.set_clicks(clicker.initial_clicks())
        for _ in range(9):
            clicker.next_click(0, masks)
            masks = predictor.set_clicks(list(clicker.clicks))
        plain.set_image(sample.image_path)
        refined_ious.append(float(clicker.ious(masks)[0]))
        plain_ious.append(float(clicker.ious(plain.label_map_of(list(clicker.clicks))[None] == 1)[0]))
    assert np.mean(refined_ious) >= np.mean(plain_ious) + 0.01, (refined_ious, plain_ious)


def training_command() -> list[str]:
    """The `train_accelerate.py` arguments of the model card's recipe."""
    card = (BUNDLED / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", card[card.index("## Training procedure") :], re.S)
    block = next(b for b in blocks if "train_accelerate.py" in b)
    command = " ".join(line.rstrip("\\").strip() for line in block.splitlines() if not line.startswith("#"))
    words = shlex.split(command[command.index("train_accelerate.py") :])
    return words[1:]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "coco128-seg").is_dir(), reason="../shared/data/coco128-seg is not present")
def test_the_model_card_command_runs_and_starts_from_the_same_weights_each_run(tmp_path) -> None:
    """Re-run the card's stage-1 command for one step on a stand-in dataset, twice: it runs with today's code and
    starts from the same initial weights (which do not depend on the data) both times. (The recorded digest of the
    bundled run holds for the code of commit c494515: since the plain-model refactor a new model's head is drawn by
    `_init_weights`, as docs/bundled-model-training.md says.)"""
    from dynamite_hf.data.instances import build_dataset
    from dynamite_hf.data.sources import read_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        examples = [e for _, e in zip(range(2), read_source(f"yolo:{DATA / 'coco128-seg'}"), strict=False)]
        build_dataset(examples).save_to_disk(tmp_path / "data")
    args = training_command()
    for flag, value in (("--dataset", str(tmp_path / "data")), ("--output-dir", str(tmp_path / "run"))):
        position = args.index(flag)
        end = next((i for i in range(position + 1, len(args)) if args[i].startswith("--")), len(args))
        args[position + 1 : end] = [value]
    args += ["--max-steps", "1", "--checkpoint-every", "0", "--report-to", "none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    digests = []
    for run in ("run", "again"):
        run_args = list(args)
        run_args[run_args.index("--output-dir") + 1] = str(tmp_path / run)
        result = subprocess.run(
            [sys.executable, str(ROOT / "train_accelerate.py"), *run_args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        digests.append(json.loads((tmp_path / run / "train_summary.json").read_text())["initial_weight_digest"])
    assert digests[0] == digests[1]
