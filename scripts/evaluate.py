#!/usr/bin/env python
"""Evaluate a model with the paper's click protocol on a benchmark set.

    python scripts/evaluate.py --model path/to/model --dataset grabcut --data-root ../shared/data/GrabCut
    python scripts/evaluate.py --model path/to/model --dataset davis --data-root ../shared/data/DAVIS \\
        --mode multi --strategy random

Single-instance mode reports NoC@85/90 and NFO with at most --max-clicks clicks (20) and an IoU target of 0.90;
multi-instance mode reports NCI / NFO / NFI / mIoU with 10 clicks per object and an IoU target of 0.85. Writes
results.md, results.json and (single) miou_per_click.png to --output, and prints the table.

`--report obedience` measures instead whether clicks do what they say (`dynamite_hf.evaluation.obedience`):
single mode runs --max-clicks protocol clicks per object without stopping and reports, per click, the share of
positive clicks whose pixel ends up in the object and of negative clicks whose pixel ends up outside, and the
IoU change; multi mode clicks each object once as a new instance and reports the share of empty instances and
of instances containing their own click.

    python scripts/evaluate.py --model models/dynamite-mobilenet-v2 --dataset grabcut \
        --data-root ../shared/data/GrabCut --report obedience --max-clicks 10

Under `accelerate launch --multi_gpu --num_processes N scripts/evaluate.py ...` (`--multi_gpu` on a CPU-only
machine too: without it accelerate starts one process) the samples are shared among N processes (sample i on
process i % N; `dynamite_hf.sharding`) and the main process writes the same files as a one-process run: the same numbers for single-instance runs and the deterministic strategies (best, worst, wlb, max_dt) when
the processes compute on the CPU; only the timings differ. `random` and `round_robin` draw from one random
stream over the whole run, which processes cannot share: a sharded run of them needs --allow-sharded-random and
gives other numbers (one stream per process, each seeded 123456 + seed-id, so they depend on N).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from dynamite_hf import DynamiteConfig, DynamiteImageProcessor, DynamiteModel, DynamitePredictor
from dynamite_hf.data.benchmarks import DATASETS, iter_dataset
from dynamite_hf.evaluation import (
    MULTI_INSTANCE_STRATEGIES,
    evaluate_multi_instance,
    evaluate_single_instance,
    multi_instance_metrics,
    single_instance_metrics,
)
from dynamite_hf.evaluation.obedience import (
    evaluate_instance_separation,
    evaluate_obedience,
    obedience_metrics,
    per_sample,
    separation_metrics,
)
from dynamite_hf.evaluation.protocols import ModelSegmenter
from dynamite_hf.evaluation.report import (
    multi_instance_table,
    obedience_table,
    save_report,
    separation_table,
    single_instance_table,
)
from dynamite_hf.inference.runtime import tune_cpu_allocator
from dynamite_hf.predictor import load_processor
from dynamite_hf.sharding import current_processes, run_sharded
from dynamite_hf.training.imagenet import load_imagenet_backbone

# The strategies that draw from one random stream over the whole run (see the module docstring).
SHARED_STREAM_STRATEGIES = ("random", "round_robin")


def pixel_count(text: str) -> int:
    """argparse type of the resize options: a positive whole number of pixels."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of pixels, got {text!r}")
    return int(text)


def sample_count(text: str) -> int:
    """argparse type of --limit: a positive whole number of samples."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of samples, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="save_pretrained folder or Hub id")
    parser.add_argument(
        "--preset", help="instead of --model: a preset with random weights (ImageNet backbone for mobilenet_v2)"
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--mode", choices=("single", "multi"), default="single")
    parser.add_argument("--strategy", choices=MULTI_INSTANCE_STRATEGIES, default="random")
    parser.add_argument(
        "--report",
        choices=("protocol", "obedience"),
        default="protocol",
        help="protocol: the paper's metrics; obedience: whether each click is obeyed (see above)",
    )
    parser.add_argument("--max-clicks", type=int, default=20, help="single-instance click cap")
    parser.add_argument("--iou-threshold", type=float, help="default 0.90 (single) / 0.85 (multi)")
    parser.add_argument("--seed-id", type=int, default=0, help="random strategies use seed 123456 + seed-id")
    parser.add_argument("--limit", type=sample_count, help="evaluate only the first N samples")
    parser.add_argument(
        "--min-objects", type=int, default=0, help="multi mode: only images with at least this many objects"
    )
    parser.add_argument(
        "--short-edge", type=pixel_count, help="inference resize: shortest edge (default: the config's)"
    )
    parser.add_argument(
        "--max-size", type=pixel_count, help="inference resize: longest-edge cap (default: the config's)"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="opt-in int8 FFN layers (dynamite_hf.inference.int8; CPU only): faster, masks change slightly",
    )
    parser.add_argument(
        "--guided-filter-radius",
        type=int,
        help="boundary refinement (dynamite_hf.models.dynamite.refinement): the guided filter's radius in working-size pixels, 0 "
        "to turn it off (default: the config's; the bundled model's is on, the released models' off)",
    )
    parser.add_argument("--output", default="evaluation_output")
    parser.add_argument(
        "--allow-sharded-random",
        action="store_true",
        help="under accelerate launch with several processes: run --strategy random / round_robin with one random "
        "stream per process (numbers differ from a one-process run's)",
    )
    args = parser.parse_args(argv)
    if (args.model is None) == (args.preset is None):
        parser.error("give exactly one of --model or --preset")
    processes = current_processes()
    shared_stream = args.mode == "multi" and args.report == "protocol" and args.strategy in SHARED_STREAM_STRATEGIES
    if processes.is_sharded and shared_stream and not args.allow_sharded_random:
        parser.error(
            f"--strategy {args.strategy} draws from one random stream over the whole run, which {processes.size} "
            "processes cannot share, so a sharded run gives other numbers than a one-process run; run one process "
            "for the original's numbers, or add --allow-sharded-random to accept one stream per process"
        )

    tune_cpu_allocator()
    if args.model:
        model = DynamiteModel.from_pretrained(args.model)
        processor = load_processor(args.model).image_processor
    else:
        model = DynamiteModel(DynamiteConfig.from_preset(args.preset))
        if args.preset == "mobilenet_v2":
            load_imagenet_backbone(model)
        processor = DynamiteImageProcessor.from_preset(args.preset)
    model.to(processes.device)
    if args.guided_filter_radius is not None:
        if args.guided_filter_radius < 0:
            parser.error(f"--guided-filter-radius must be >= 0 (0: off), got {args.guided_filter_radius}")
        processor.guided_filter_radius = args.guided_filter_radius
    if args.short_edge or args.max_size:
        size = processor.size
        processor.size = {
            "shortest_edge": args.short_edge or size["shortest_edge"],
            "longest_edge": args.max_size or size["longest_edge"],
        }
    if args.int8:
        from dynamite_hf.inference.int8 import quantize_int8

        quantize_int8(model)
    # The paper's protocols have no cap (10 clicks per object of images with any number of objects).
    segmenter = ModelSegmenter(DynamitePredictor(model, processor, max_instances=None, max_clicks=None))
    # Read lazily: a process keeps only its share of the samples (`run_sharded`).
    samples = (s for s in iter_dataset(args.dataset, args.data_root, args.mode) if s.num_objects >= args.min_objects)
    samples = itertools.islice(samples, args.limit)

    def run(evaluate, description: str, unit: str = "sample"):
        return run_sharded(evaluate, samples, processes, description, unit)

    if args.report == "obedience" and args.mode == "single":
        result = run(
            lambda share, progress: evaluate_obedience(segmenter, share, args.max_clicks, progress), "obedience"
        )
    elif args.report == "obedience":
        result = run(
            lambda share, progress: evaluate_instance_separation(segmenter, share, progress), "separation", "image"
        )
    elif args.mode == "single":
        threshold = args.iou_threshold or 0.90
        result = run(
            lambda share, progress: evaluate_single_instance(segmenter, share, args.max_clicks, threshold, progress),
            "single-instance",
        )
    else:
        threshold = args.iou_threshold or 0.85
        result = run(
            lambda share, progress: evaluate_multi_instance(
                segmenter, share, args.strategy, threshold, seed_id=args.seed_id, progress=progress
            ),
            f"multi-instance ({args.strategy})",
            "image",
        )
    if not processes.is_main:
        return

    if args.report == "obedience" and args.mode == "single":
        metrics = obedience_metrics(result)
        table = obedience_table(args.dataset, metrics)
        details = {"samples": per_sample(result)}
    elif args.report == "obedience":
        metrics = separation_metrics(result)
        table = separation_table(args.dataset, metrics)
        details = {"samples": per_sample(result)}
    elif args.mode == "single":
        metrics = single_instance_metrics(result)
        table = single_instance_table(args.dataset, metrics)
        details = {"samples": dict(zip(result.sample_ids, result.ious, strict=True))}
    else:
        metrics = multi_instance_metrics(result)
        table = multi_instance_table(args.dataset, args.strategy, metrics)
        details = {
            "final_ious": dict(zip(result.sample_ids, result.final_ious, strict=True)),
            "interactions": dict(zip(result.sample_ids, result.interactions, strict=True)),
        }
    if processes.is_sharded and shared_stream:
        details["random_stream"] = (
            f"one per process ({processes.size} processes, image i on process i % {processes.size}), each seeded "
            f"123456 + seed-id: not the one-process run's numbers"
        )
    save_report(
        Path(args.output),
        table,
        metrics,
        {
            "model": args.model or f"preset:{args.preset}",
            "report": args.report,
            "resize": dict(processor.size),
            "guided_filter": {
                "radius": processor.guided_filter_radius,
                "eps": processor.guided_filter_eps,
                "temperature": processor.guided_filter_temperature,
            },
            **details,
        },
    )
    print(table)


if __name__ == "__main__":
    main()
