#!/usr/bin/env python
"""Can the training pipeline learn to follow clicks? A diagnostic on generated images where only the click
says which object is meant (2-5 shapes of one shared texture on a background of another).

    python scripts/benchmark_click_learning.py --output runs/click_learning
    python scripts/benchmark_click_learning.py --compare models/dynamite-mobilenet-v2   # also measure a model
    # the click-learning test's run (tests/test_click_learning.py): fit 8 images, measured on the same images
    python scripts/benchmark_click_learning.py --output runs/fit8 --train-images 8 --measure-on train \
        --image-size 128 --crop-size 128 --test-short-edge 128 --min-scale 1 --max-scale 1 --steps 300 \
        --batch-size 8 --learning-rate 1e-3 --trainer-args "--num-points 2048 --max-num-interactions 0 \
        --click-loss-radius 2"

Builds `--train-images` textured-shape images (seed 1) and `--test-images` held-out ones (seed 2), trains the
CPU preset from its ImageNet start with the project's own trainer (`train_accelerate.py`, unchanged recipe but
for the budget) and reports on the held-out images (or, with `--measure-on train`, on the training images
themselves: whether the run could fit them, which a pipeline that loses the click cannot):

- one click per shape, each a new instance: the share of non-empty instances, of instances containing their
  own click, and the mean IoU;
- each shape clicked alone: the mean IoU, the share of masks that also take half of another shape
  ("saliency-like": what a model that ignores where it is clicked does), and `click_blind_ceiling`, the highest
  mean IoU any model that ignores where it is clicked can reach on these images (one mask per image, whichever
  shape is clicked: the IoUs of one mask with disjoint shapes sum to at most 1, so images / shapes);
- `click_blind`: the same figures of the same network with every click moved to the image centre (the control:
  a network that cannot follow the click, whose single-click mIoU stays within the ceiling).

The paper's recipe at this budget (2,000 images, 640 steps x 8 = 5,120 samples, crop 256): about 25 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from dynamite_hf import DynamiteImageProcessor, DynamiteModel, DynamitePredictor
from dynamite_hf.data.benchmarks import read_dataset
from dynamite_hf.data.instances import build_dataset
from dynamite_hf.data.synthetic import save_instance_folder, textured_shapes
from dynamite_hf.evaluation.obedience import (
    ClickBlindSegmenter,
    evaluate_instance_separation,
    evaluate_single_click_choice,
    separation_metrics,
    single_click_metrics,
)
from dynamite_hf.evaluation.protocols import ModelSegmenter

ROOT = Path(__file__).resolve().parent.parent


def click_figures(segmenter, samples) -> dict:
    """The click-following figures of `segmenter` on `samples` (see the module docstring)."""
    separation = separation_metrics(evaluate_instance_separation(segmenter, samples, progress=False))
    single = single_click_metrics(evaluate_single_click_choice(segmenter, samples, progress=False))
    return {
        "one_click_per_shape": {
            "non_empty_instances": 1.0 - separation["empty_instances"],
            "instances_containing_click": separation["instances_containing_click"],
            "mIoU": separation["mIoU"],
        },
        "one_shape_clicked": {
            "mIoU": single["mIoU"],
            "saliency_like": single["saliency_like"],
            "click_blind_ceiling": single["click_blind_ceiling"],
        },
        "objects": separation["objects"],
    }


def measure(folder: Path | str, samples, short_edge: int | None = None) -> dict:
    """The click-following figures of the model saved in `folder` (resized to `short_edge` if given), and those
    of the same model made deaf to where it is clicked (`click_blind`)."""
    model = DynamiteModel.from_pretrained(folder)
    processor = DynamiteImageProcessor.from_pretrained(folder)
    if short_edge:
        processor.size = {
            "shortest_edge": short_edge,
            "longest_edge": max(short_edge, processor.size["longest_edge"]),
        }
    segmenter = ModelSegmenter(DynamitePredictor(model, processor))
    figures = click_figures(segmenter, samples)
    return {**figures, "click_blind": click_figures(ClickBlindSegmenter(segmenter), samples)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_command(args, train_data: Path, model_dir: Path) -> list[str]:
    trainer = [
        str(ROOT / "train_accelerate.py"),
        "--dataset",
        str(train_data),
        "--output-dir",
        str(model_dir),
        "--preset",
        "mobilenet_v2",
        "--init",
        "imagenet",
        "--crop-size",
        str(args.crop_size),
        "--min-scale",
        str(args.min_scale),
        "--max-scale",
        str(args.max_scale),
        "--min-area",
        "50",
        "--batch-size",
        str(args.batch_size // args.processes),
        "--max-steps",
        str(args.steps),
        "--learning-rate",
        str(args.learning_rate),
        "--checkpoint-every",
        "0",
        "--log-every",
        "20",
        "--report-to",
        "none",
        "--seed",
        str(args.seed),
        "--overwrite-output-dir",  # each run trains afresh (the generated data is kept)
        *shlex.split(args.trainer_args),
    ]
    if args.processes == 1:
        return [sys.executable, *trainer]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    return [
        *launcher,
        str(args.processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",  # not the fixed default, which another run on the machine may hold
        str(free_port()),
    ] + trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/click_learning", help="data, the trained model and report.json")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument(
        "--measure-on",
        choices=["held-out", "train"],
        default="held-out",
        help="held-out: --test-images new images; train: the training images (can the run fit them?)",
    )
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over --processes)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument(
        "--test-short-edge", type=int, help="inference resize of the held-out images (default: the config's)"
    )
    parser.add_argument("--min-scale", type=float, default=0.5, help="large-scale jitter range of the training crops")
    parser.add_argument("--max-scale", type=float, default=1.5)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2091831170)
    parser.add_argument(
        "--trainer-args",
        default="",
        help="more train_accelerate.py flags, e.g. '--num-points 2048 --click-loss-radius 2'",
    )
    parser.add_argument("--compare", action="append", default=[], help="also measure this save_pretrained folder")
    parser.add_argument("--skip-training", action="store_true", help="only measure the --compare models")
    args = parser.parse_args(argv)
    if args.batch_size % args.processes:
        parser.error(f"--batch-size must be a multiple of --processes, got {args.batch_size} and {args.processes}")

    output = Path(args.output)
    shutil.rmtree(output / "test", ignore_errors=True)  # held-out images of an earlier run must not mix in
    if args.measure_on == "train":
        measured = textured_shapes(args.train_images, seed=1, size=args.image_size)
    else:
        measured = textured_shapes(args.test_images, seed=2, size=args.image_size)
    test_root = save_instance_folder(measured, output / "test")
    samples = read_dataset("folder", test_root, mode="multi")
    report: dict = {"measured_on": args.measure_on, "images": len(samples)}
    if not args.skip_training:
        train_data = output / "train"
        if not train_data.exists():
            build_dataset(textured_shapes(args.train_images, seed=1, size=args.image_size)).save_to_disk(
                str(train_data)
            )
        model_dir = output / "model"
        started = time.perf_counter()
        environment = dict(os.environ)
        if args.processes > 1:  # share the cores between the processes unless told otherwise
            environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.processes)))
        subprocess.run(train_command(args, train_data, model_dir), check=True, env=environment)
        report["trained"] = {
            "train_images": args.train_images,
            "samples_seen": args.steps * args.batch_size,
            "train_seconds": round(time.perf_counter() - started, 1),
            **measure(model_dir, samples, args.test_short_edge),
        }
    for folder in args.compare:
        report[folder] = measure(folder, samples, args.test_short_edge)
    (output / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
