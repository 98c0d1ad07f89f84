#!/usr/bin/env python
"""Time the backends (`dynamite_hf.inference`) side by side on the two stages of DynaMITe, in one process: the
plain model ("eager"), the CPU click decoder ("cpu") and onnxruntime ("onnx").

    python scripts/export_onnx.py --model models/dynamite-mobilenet-v2 --output onnx/mobilenet-v2
    python scripts/benchmark_onnx.py --model models/dynamite-mobilenet-v2 --onnx onnx/mobilenet-v2
    python scripts/benchmark_onnx.py --model resnet50 --onnx onnx/r50 --size 800x1216

`--model` is the save_pretrained folder the graphs were exported from (then the largest logit difference from
the plain model is printed too), or a preset (random weights: timings only). Per backend: the median time of the
per-image stage, of one click's per-query logits and of a whole click (logits resized to the image and fused into
a label map, `post_process_masks`), with 2 and 10 instances (one click each plus one background click). Every
backend gets the same number of threads.
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

    from dynamite_hf import PRESETS, Click, DynamiteConfig, DynamiteImageProcessor, DynamiteModel
    from dynamite_hf.clicks import clicks_to_inputs
    from dynamite_hf.inference import select_backend
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
    backends = {
        "eager": torch_model,
        "cpu": select_backend(torch_model, "cpu"),
        "onnx": OnnxDynamiteModel.from_pretrained(args.onnx, num_threads=args.threads),
    }
    processor = DynamiteImageProcessor()
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    sizes = [(height, width)]

    def median_seconds(function) -> float:
        function()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def whole_click(backend, embeddings, clicks):
        output = backend(image_embeddings=embeddings, **clicks)
        return processor.post_process_masks(output.pred_masks, output.query_labels, sizes, sizes)

    rows, logits = [], {}
    for name, backend in backends.items():
        with torch.inference_mode():
            row = {"per image": median_seconds(lambda backend=backend: backend.get_image_embeddings(pixel_values))}
            embeddings = backend.get_image_embeddings(pixel_values)
            for instances in (2, 10):
                clicks = [
                    Click(k, (k + 0.5) * height / instances, (k + 0.5) * width / instances, k, "model")
                    for k in range(instances)
                ] + [Click(None, 5.0, 5.0, instances, "model")]
                clicks = clicks_to_inputs([clicks])
                row[f"logits, {instances} inst"] = median_seconds(
                    lambda backend=backend, clicks=clicks, embeddings=embeddings: backend(
                        image_embeddings=embeddings, **clicks
                    )
                )
                row[f"click, {instances} inst"] = median_seconds(
                    lambda backend=backend, clicks=clicks, embeddings=embeddings: whole_click(
                        backend, embeddings, clicks
                    )
                )
                logits[name, instances] = backend(image_embeddings=embeddings, **clicks).pred_masks
        rows.append((name, row))

    print(f"{args.model} at {height}x{width}, {args.threads} threads, median of {args.repeats}")
    print("| stage | " + " | ".join(f"{name} (s)" for name in backends) + " | eager / cpu | eager / onnx |")
    print("|---" * (len(backends) + 3) + "|")
    for stage in rows[0][1]:
        seconds = [row[stage] for _, row in rows]
        print(
            f"| {stage} | "
            + " | ".join(f"{value:.3f}" for value in seconds)
            + f" | {seconds[0] / seconds[1]:.2f} | {seconds[0] / seconds[2]:.2f} |"
        )
    if trained:
        for name in ("cpu", "onnx"):
            difference = max(float((logits["eager", k] - logits[name, k]).abs().max()) for k in (2, 10))
            print(f"largest |logit difference| of {name} from eager: {difference:.2e}")


if __name__ == "__main__":
    main()
