#!/usr/bin/env python
"""Time PyTorch and onnxruntime side by side on the two stages of DynaMITe, in one process.

    python scripts/export_onnx.py --model models/dynamite-mobilenet-v2 --output onnx/mobilenet-v2
    python scripts/benchmark_onnx.py --model models/dynamite-mobilenet-v2 --onnx onnx/mobilenet-v2
    python scripts/benchmark_onnx.py --model resnet50 --onnx onnx/r50 --size 800x1216

`--model` is the save_pretrained folder the graphs were exported from (then the largest logit difference
between the backends is printed too), or a preset (random weights: timings only). Per backend: the median time
of the per-image stage and of one click's per-query logits (the per-click stage, `query_logits`) and of a whole
click (logits resized to the image and fused into a label map, `forward`), with 2 and 10 instances (one click
each plus one background click). Both backends get the same number of threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="save_pretrained folder or preset the graphs came from")
    parser.add_argument("--onnx", required=True, help="the export_onnx folder")
    parser.add_argument("--size", default="448x672", help="padded input HEIGHTxWIDTH (default 448x672, the app's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the median is printed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from dynamite_hf import PRESETS, Click, DynamiteConfig, DynamiteModel
    from dynamite_hf.inference.onnx import OnnxDynamiteModel
    from dynamite_hf.inference.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    trained = os.path.isdir(args.model)
    if trained:
        torch_model = DynamiteModel.from_pretrained(args.model).eval()
    elif args.model in PRESETS:
        torch_model = DynamiteModel(DynamiteConfig.from_preset(args.model)).eval()
    else:
        parser.error(f"--model must be a save_pretrained folder or one of {PRESETS}, got {args.model!r}")
    onnx_model = OnnxDynamiteModel.from_pretrained(args.onnx, num_threads=args.threads)
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))

    def median_seconds(function) -> float:
        function()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows, logits = [], {}
    for name, model in (("torch", torch_model), ("onnxruntime", onnx_model)):
        with torch.inference_mode():
            row = {"per image": median_seconds(lambda model=model: model.get_image_features(pixel_values))}
            features = model.get_image_features(pixel_values)
            for instances in (2, 10):
                clicks = [
                    Click(k, (k + 0.5) * height / instances, (k + 0.5) * width / instances, k, "model")
                    for k in range(instances)
                ] + [Click(None, 5.0, 5.0, instances, "model")]
                row[f"logits, {instances} inst"] = median_seconds(
                    lambda model=model, clicks=clicks, features=features: model.query_logits(
                        features, [clicks], [(height, width)]
                    )
                )
                row[f"click, {instances} inst"] = median_seconds(
                    lambda model=model, clicks=clicks, features=features: model(
                        image_features=features, clicks=[clicks]
                    )
                )
                logits[name, instances] = model.query_logits(features, [clicks], [(height, width)])[0]
        rows.append((name, row))

    print(f"{args.model} at {height}x{width}, {args.threads} threads, median of {args.repeats}")
    print("| stage | torch (s) | onnxruntime (s) | torch / onnxruntime |")
    print("|---|---|---|---|")
    for stage in rows[0][1]:
        torch_s, onnx_s = rows[0][1][stage], rows[1][1][stage]
        print(f"| {stage} | {torch_s:.3f} | {onnx_s:.3f} | {torch_s / onnx_s:.2f} |")
    if trained:
        difference = max(float((logits["torch", k] - logits["onnxruntime", k]).abs().max()) for k in (2, 10))
        print(f"largest |logit difference| between the backends: {difference:.2e}")


if __name__ == "__main__":
    main()
