"""train_accelerate.py end to end on real images from ../shared/data: two processes stay in sync, a resumed run
equals the uninterrupted one, unusable rows are skipped and counted, and a small model overfits four images."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamite_hf import DynamiteImageProcessor, DynamiteModel
from dynamite_hf.clicks import clicks_to_inputs
from dynamite_hf.training.trainer import weights_digest

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128-seg"
requires_data = pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} is not present")
pytestmark = [requires_data, pytest.mark.slow]

# Small and quick: 128 px crops, 2 images a step, few loss points.
QUICK = ["--crop-size", "128", "--batch-size", "2", "--num-points", "1024", "--report-to", "none", "--log-every", "1"]


def run(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable]) + [str(ROOT / "train_accelerate.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> Path:
    """The first four coco128-seg images with an instance covering a tenth of the image, as a saved dataset, plus
    a corrupt image and an image without instances (a second dataset, concatenated by the trainer)."""
    import datasets

    from dynamite_hf.data.instances import build_dataset
    from dynamite_hf.data.sources import read_source

    folder = tmp_path_factory.mktemp("data")
    large = (e for e in read_source(f"yolo:{COCO128}") if any(m.mean() > 0.1 for m in e.masks))
    examples = [e for _, e in zip(range(4), large, strict=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_dataset(examples).save_to_disk(folder / "four")
    good = build_dataset(examples[:1])[0]
    corrupt = {**good, "sample_id": "corrupt", "image": {"bytes": b"\xff\xd8 truncated jpeg", "path": "corrupt.jpg"}}
    with open(examples[1].image_path, "rb") as file:
        image = {"bytes": file.read(), "path": "empty.jpg"}
    empty = {**good, "sample_id": "no-instances", "image": image, "masks": [], "areas": [], "categories": []}
    bad = datasets.Dataset.from_list([corrupt, empty], features=datasets.load_from_disk(folder / "four").features)
    bad.save_to_disk(folder / "bad")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def summary(output: Path) -> dict:
    return json.loads((output / "train_summary.json").read_text())


def test_two_processes_hold_identical_weights(four_images, tmp_path) -> None:
    output = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    run(["--dataset", str(four_images / "four"), "--output-dir", str(output), "--max-steps", "2", *QUICK], launcher)
    result = summary(output)
    assert result["num_processes"] == 2 and result["steps"] == 2
    first, second = result["rank_weight_digests"]
    assert first == second
    saved = DynamiteModel.from_pretrained(output)
    assert weights_digest(saved) == first


def _optimizer_tensors(path: Path) -> list[torch.Tensor]:
    state = torch.load(path / "optimizer.bin", weights_only=False)["state"]
    return [t for key in sorted(state) for t in state[key].values() if isinstance(t, torch.Tensor)]


def test_a_resumed_run_equals_the_uninterrupted_one_and_skips_bad_rows(four_images, tmp_path) -> None:
    data = ["--dataset", str(four_images / "four"), str(four_images / "bad")]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*data, "--max-steps", "4", "--checkpoint-every", "2", *QUICK]
    run([*common, "--output-dir", str(straight)])
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    log = run([*common, "--output-dir", str(resumed), "--resume-from-checkpoint", "latest"])
    assert "resumed from" in log.stdout + log.stderr

    a, b = summary(straight), summary(resumed)
    assert a["rank_weight_digests"] == b["rank_weight_digests"]
    assert (a["steps"], a["micro_steps"]) == (b["steps"], b["micro_steps"]) == (4, 4)
    for x, y in zip(
        _optimizer_tensors(straight / "checkpoints" / "step_4"),
        _optimizer_tensors(resumed / "checkpoints" / "step_4"),
        strict=True,
    ):
        assert torch.equal(x, y)
    # 8 samples from 6 rows, two of them unusable: skipped, warned about, counted (and restored on resume)
    assert a["skipped_rows"] == b["skipped_rows"] and sum(a["skipped_rows"].values()) >= 1
    assert set(a["skipped_rows"]) <= {"unreadable image", "no instance masks"}


def _clicked_iou(model: DynamiteModel, data, positions: list[int]) -> float:
    """Mean IoU of every instance of fixed training samples, each segmented alone (as at inference: no batch
    padding queries) from its initial clicks, over the image (the crop's padding is never supervised)."""
    from dynamite_hf.training import DynamiteForInteractiveTraining, collate

    module = DynamiteForInteractiveTraining(model).eval()
    ious = []
    for position in positions:
        batch = collate([data[position]])
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, **clicks_to_inputs(batch.clicks))
            (predicted,) = module.predicted_maps(outputs.pred_masks, outputs.query_labels, batch.padding_masks)
        truth, inside = batch.instance_maps[0], ~batch.padding_masks[0]
        for k in range(1, truth.max() + 1):
            hit, predicted_k = truth == k, (predicted == k) & inside
            ious.append((hit & predicted_k).sum() / (hit | predicted_k).sum())
    return float(np.mean(ious))


def test_a_small_model_overfits_four_real_images(four_images, tmp_path) -> None:
    import datasets

    from dynamite_hf.training import DynamiteTrainingDataset

    output = tmp_path / "overfit"
    # The CPU preset (ImageNet backbone), 160 px crops of the large instances only, no LR drops.
    args = ["--dataset", str(four_images / "four"), "--output-dir", str(output), "--max-steps", "100"]
    args += ["--crop-size", "160", "--batch-size", "4", "--num-points", "2048", "--learning-rate", "3e-4"]
    args += ["--min-scale", "0.6", "--max-scale", "1.0", "--min-area", "30000", "--max-num-interactions", "1"]
    args += ["--lr-milestones", ""]
    args += ["--checkpoint-every", "0", "--report-to", "tensorboard", "--log-every", "10"]
    run(args)
    logs = summary(output)["last_logs"]
    # Stated bound: the summed deep-supervised loss (7 predictions x (5 BCE + 5 Dice)) starts at 45-75.
    assert logs["train/loss"] < 30.0, logs
    assert list(output.glob("**/events.out.tfevents.*")), "no TensorBoard log written"

    trained = DynamiteModel.from_pretrained(output).eval()
    processor = DynamiteImageProcessor.from_pretrained(output)
    initial = DynamiteModel(trained.config.__class__.from_dict(trained.config.to_dict())).eval()
    torch.manual_seed(0)
    data = DynamiteTrainingDataset(
        datasets.load_from_disk(four_images / "four"),
        160,
        1,
        processor.image_mean,
        processor.image_std,
        min_area=30000,
        min_scale=0.6,
        max_scale=1.0,
    )
    positions = list(range(8))
    before, after = _clicked_iou(initial, data, positions), _clicked_iou(trained, data, positions)
    print(f"clicked-instance IoU before {before:.3f}, after {after:.3f}; final loss {logs['train/loss']:.2f}")
    # measured: 0.08 -> 0.56 (loss 21) in 100 steps
    assert after > before + 0.3 and after > 0.45, (before, after)


def _training_process(marker: str, local_rank: int) -> int | None:
    """The pid of the trainer process of `local_rank` whose command line holds `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            marker in command
            and "train_accelerate.py" in command
            and f"LOCAL_RANK={local_rank}".encode() in environment
        ):
            return int(entry.name)
    return None


def test_a_hung_process_ends_the_run_with_an_error_naming_rank_and_step(four_images, tmp_path) -> None:
    """Process 1 is frozen (SIGSTOP) mid-run: process 0's next gradient all-reduce times out, and the run ends
    with an error that names the process and the step, instead of waiting forever."""
    import signal
    import time

    output = tmp_path / "hung"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    args = ["--dataset", str(four_images / "four"), "--output-dir", str(output), "--max-steps", "10000", *QUICK]
    args += ["--collective-timeout", "15", "--checkpoint-every", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "log.txt"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*launcher, str(ROOT / "train_accelerate.py"), *args], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    frozen = None
    try:
        deadline = time.monotonic() + 300
        while "training:" not in log.read_text() or "| 3/" not in log.read_text().replace("\r", "\n"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        frozen = _training_process(str(output), 1)
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        returncode = process.wait(timeout=240)
    finally:
        if frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert returncode != 0
    assert re.search(r"process 0 of 2: a collective operation .* at step \d+ \(micro-step \d+\)", text), text[-3000:]
    assert "--resume-from-checkpoint" in text
