#!/usr/bin/env python
"""Time the two stages of DynaMITe on this machine, for every preset (random weights).

    python scripts/benchmark.py                          # all presets at 800x1200, 2 threads
    python scripts/benchmark.py --presets mobilenet_v2 --size 512x768

Per preset: the median time of the per-image stage (backbone + pixel decoder + click-independent projections)
and of one click (interactive transformer + post-processing to the full input resolution) with 2, 5 and 10
instances (one click each, plus one background click), and the peak resident memory of the process. Each
preset runs in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def measure(preset: str, height: int, width: int, repeats: int, threads: int) -> dict:
    import resource

    import torch

    from dynamite_hf import Click, DynamiteConfig, DynamiteModel
    from dynamite_hf.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DynamiteModel(DynamiteConfig.from_preset(preset)).eval()
    divisor = model.config.size_divisibility
    padded = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
    pixel_values = torch.randn(1, 3, *padded)

    def timed(function, count):
        times = []
        for _ in range(count):
            start = time.perf_counter()
            result = function()
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    with torch.inference_mode():
        model.get_image_features(pixel_values)  # warm-up
        image_seconds, features = timed(lambda: model.get_image_features(pixel_values), repeats)
        click_seconds = {}
        for instances in (2, 5, 10):
            clicks = [
                Click(k, (k + 0.5) * height / instances, (k + 0.5) * width / instances, k, "model")
                for k in range(instances)
            ] + [Click(None, 5.0, 5.0, instances, "model")]

            def run(clicks=clicks):
                return model(image_features=features, clicks=[clicks], image_sizes=[(height, width)]).label_maps[0]

            run()  # warm-up
            click_seconds[instances], _ = timed(run, repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": preset,
        "size": f"{height}x{width}",
        "image_s": image_seconds,
        "click_s": click_seconds,
        "peak_mb": peak_mb,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    from dynamite_hf import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--size", default="800x1200", help="input HEIGHTxWIDTH before padding (default 800x1200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is printed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    if args.child:
        print(json.dumps(measure(args.presets[0], height, width, args.repeats, args.threads)))
        return

    results = []
    print(
        "| preset | params (M) | input | per image (s) | click, 2 inst (s) | 5 inst (s) | 10 inst (s) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        command = [sys.executable, __file__, "--child", "--presets", preset, "--size", args.size]
        command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"| {preset} | failed: {completed.stderr.strip().splitlines()[-1]} |")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(result)
        clicks = result["click_s"]
        print(
            f"| {preset} | {result['parameters_m']:.1f} | {result['size']} | {result['image_s']:.2f} | "
            f"{clicks['2']:.3f} | {clicks['5']:.3f} | {clicks['10']:.3f} | {result['peak_mb']:.0f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
