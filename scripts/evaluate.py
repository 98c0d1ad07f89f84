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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamite_hf import DynamiteConfig, DynamiteImageProcessor, DynamiteModel, DynamitePredictor
from dynamite_hf.evaluation import (
    DATASETS,
    MULTI_INSTANCE_STRATEGIES,
    evaluate_multi_instance,
    evaluate_single_instance,
    multi_instance_metrics,
    read_dataset,
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
from dynamite_hf.runtime import tune_cpu_allocator


def pixel_count(text: str) -> int:
    """argparse type of the resize options: a positive whole number of pixels."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of pixels, got {text!r}")
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
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument(
        "--min-objects", type=int, default=0, help="multi mode: only images with at least this many objects"
    )
    parser.add_argument(
        "--short-edge", type=pixel_count, help="inference resize: shortest edge (default: the config's)"
    )
    parser.add_argument(
        "--max-size", type=pixel_count, help="inference resize: longest-edge cap (default: the config's)"
    )
    parser.add_argument("--output", default="evaluation_output")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.preset is None):
        parser.error("give exactly one of --model or --preset")

    tune_cpu_allocator()
    if args.model:
        model = DynamiteModel.from_pretrained(args.model)
    else:
        extra = {"use_imagenet_backbone": True} if args.preset == "mobilenet_v2" else {}
        model = DynamiteModel(DynamiteConfig.from_preset(args.preset, **extra))
    processor = DynamiteImageProcessor.from_config(
        model.config,
        short_edge=args.short_edge or model.config.test_short_edge,
        max_size=args.max_size or model.config.test_max_size,
    )
    segmenter = ModelSegmenter(DynamitePredictor(model, processor))
    samples = [s for s in read_dataset(args.dataset, args.data_root, args.mode) if s.num_objects >= args.min_objects]
    samples = samples[: args.limit]

    if args.report == "obedience" and args.mode == "single":
        result = evaluate_obedience(segmenter, samples, args.max_clicks)
        metrics = obedience_metrics(result)
        table = obedience_table(args.dataset, metrics)
        details = {"samples": per_sample(result)}
    elif args.report == "obedience":
        result = evaluate_instance_separation(segmenter, samples)
        metrics = separation_metrics(result)
        table = separation_table(args.dataset, metrics)
        details = {"samples": per_sample(result)}
    elif args.mode == "single":
        result = evaluate_single_instance(segmenter, samples, args.max_clicks, args.iou_threshold or 0.90)
        metrics = single_instance_metrics(result)
        table = single_instance_table(args.dataset, metrics)
        details = {"samples": dict(zip(result.sample_ids, result.ious, strict=True))}
    else:
        result = evaluate_multi_instance(
            segmenter, samples, args.strategy, args.iou_threshold or 0.85, seed_id=args.seed_id
        )
        metrics = multi_instance_metrics(result)
        table = multi_instance_table(args.dataset, args.strategy, metrics)
        details = {
            "final_ious": dict(zip(result.sample_ids, result.final_ious, strict=True)),
            "interactions": dict(zip(result.sample_ids, result.interactions, strict=True)),
        }
    save_report(
        Path(args.output),
        table,
        metrics,
        {
            "model": args.model or f"preset:{args.preset}",
            "report": args.report,
            "resize": {"short_edge": processor.short_edge, "max_size": processor.max_size},
            **details,
        },
    )
    print(table)


if __name__ == "__main__":
    main()
