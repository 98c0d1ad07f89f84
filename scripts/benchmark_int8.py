#!/usr/bin/env python
"""float32 against the opt-in int8 mode (`dynamite_hf.inference.int8`), side by side in one process, on real images.

    python scripts/benchmark_int8.py --data-root ../shared/data/GrabCut               # bundled model, GrabCut
    python scripts/benchmark_int8.py --parts click --max-clicks 10 --limit 20

The float32 model clicks as the evaluation protocol does (initial click, then corrective clicks from its own
errors); after every click the int8 model predicts from the same clicks. Printed:
- the median time of the per-image stage and of a click for each, alternating the two on every call, and the
  ratio (the same machine, the same moment);
- the bytes of the weights;
- how far the int8 masks are from the float32 ones: IoU between them per click (mean, minimum, share of
  clicks at IoU >= 0.99), and the mean IoU to the ground truth of both after click 1, 5, ... .

For the protocol's NoC with int8 masks run `scripts/evaluate.py --int8 ...`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/dynamite-mobilenet-v2", help="save_pretrained folder")
    parser.add_argument("--dataset", default="grabcut")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--parts", nargs="+", default=["click", "image"], help="what to quantize (click, image)")
    parser.add_argument("--max-clicks", type=int, default=5)
    parser.add_argument("--limit", type=int, help="only the first N samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import itertools

    import numpy as np
    import torch

    from dynamite_hf import DynamiteModel, DynamitePredictor
    from dynamite_hf.data.benchmarks import iter_dataset
    from dynamite_hf.evaluation.clicker import Clicker
    from dynamite_hf.inference.int8 import quantize_int8
    from dynamite_hf.inference.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    fp32 = DynamiteModel.from_pretrained(args.model).eval()
    int8 = quantize_int8(copy.deepcopy(fp32), args.parts)
    predictors = {"float32": DynamitePredictor(fp32), "int8": DynamitePredictor(int8)}
    times = {(name, stage): [] for name in predictors for stage in ("image", "click")}
    agreement, gt_ious = [], {name: {} for name in predictors}

    def timed(name: str, stage: str, function, argument):
        start = time.perf_counter()
        result = function(argument)
        times[name, stage].append(time.perf_counter() - start)
        return result

    samples = itertools.islice(iter_dataset(args.dataset, args.data_root, "single"), args.limit)
    for sample in samples:
        order = list(predictors) if len(agreement) % 2 == 0 else list(reversed(predictors))  # alternate
        for name in order:
            timed(name, "image", predictors[name].set_image, sample.image_path)
        clicker = Clicker(sample.instance_map, sample.ignore_masks, num_objects=sample.num_objects)
        clicker.initial_clicks()
        for index in range(args.max_clicks):
            masks = {}
            for name in order:
                masks[name] = timed(name, "click", predictors[name].set_clicks, list(clicker.clicks))
                gt_ious[name].setdefault(index + 1, []).append(float(clicker.ious(masks[name])[0]))
            agreement.append(iou(masks["float32"][0], masks["int8"][0]))
            if index + 1 < args.max_clicks:
                clicker.next_click(0, masks["float32"])

    def weight_mb(model) -> float:
        state = model.state_dict()
        total = 0
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.nbytes if not value.is_quantized else value.int_repr().nbytes
            elif isinstance(value, tuple):  # packed int8 params: (weight, bias)
                total += sum(v.int_repr().nbytes if v.is_quantized else v.nbytes for v in value if v is not None)
        return total / 2**20

    median_ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    print(f"{len(gt_ious['float32'][1])} images of {args.dataset}, int8 parts {args.parts}, {args.threads} threads")
    print("| | float32 | int8 | float32 / int8 |")
    print("|---|---|---|---|")
    for stage in ("image", "click"):
        a, b = median_ms["float32", stage], median_ms["int8", stage]
        print(f"| {'per image' if stage == 'image' else 'per click'} (median ms) | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
    print(f"| weights (MB) | {weight_mb(fp32):.1f} | {weight_mb(int8):.1f} | |")
    shown = [k for k in sorted(gt_ious["float32"]) if k in (1, 2, 3, 5, 10, 20)]
    for k in shown:
        a, b = np.mean(gt_ious["float32"][k]), np.mean(gt_ious["int8"][k])
        print(f"| mean IoU to the ground truth after click {k} | {a:.3f} | {b:.3f} | |")
    agreement = np.array(agreement)
    print(
        f"\nint8 masks against float32 masks over {len(agreement)} clicks: IoU mean {agreement.mean():.4f}, "
        f"minimum {agreement.min():.4f}, {np.mean(agreement >= 0.99):.1%} of clicks at IoU >= 0.99"
    )


if __name__ == "__main__":
    main()
