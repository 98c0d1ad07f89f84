#!/usr/bin/env python
"""Time the two stages of DynaMITe on this machine, for every preset (random weights).

    python scripts/benchmark.py                          # all presets at 800x1200, 2 threads
    python scripts/benchmark.py --presets mobilenet_v2 --size 512x768
    python scripts/benchmark.py --models models/dynamite-mobilenet-v2 --size 448x672   # a saved model folder
    python scripts/benchmark.py --presets resnet50 --backend eager   # the plain model instead of the CPU decoder

Per preset: the median time of the per-image stage (backbone + pixel decoder, plus what the CPU click decoder
caches per image) and of one click (interactive transformer + post-processing to the label map at the full input
resolution, as `DynamitePredictor` makes it per click) with 2, 5 and 10 instances (one click each, plus one
background click), and the peak resident memory of those stages: up to the
5-instance clicks (what the original's own driver measured: one image, clicks of 2 and 5 instances) and up to
the 10-instance ones. Each preset runs in its own process so that its peak memory is its own.

A second table puts the times against this machine's fp32 GEMM rate on the decoder FFN's own shapes: the
CPU click decoder runs over blocks of `block_rows` stride-4 pixels, so the probe multiplies such blocks by
hidden_dim x decoder_ffn_dim and back, over every stride-4 pixel. It runs once before the stages, once after,
and once after every timed run; each stage is set against the median of the probes beside its own runs, so
that a machine whose speed drifts during the run (shared machines do) moves both figures alike. Each stage's
FLOPs are counted with `torch.utils.flop_counter` (matrix products and convolutions), and the fraction of the
GEMM rate a stage reaches is the figure to track: absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path


class GemmProbe:
    """GFLOP/s of fp32 `torch.matmul` on the decoder FFN's shapes: `(block_rows, dim) @ (dim, ffn_dim)` and back,
    over blocks covering `rows` (the decoder's inference runs over blocks of pixels). Its buffers are one block's
    (a few MB), so probing beside the timed stages leaves their peak memory as it was."""

    def __init__(self, rows: int, dim: int, ffn_dim: int, block_rows: int) -> None:
        import torch

        block_rows = min(block_rows, rows)
        self.blocks = -(-rows // block_rows)
        self.x, self.w1, self.w2 = torch.randn(block_rows, dim), torch.randn(dim, ffn_dim), torch.randn(ffn_dim, dim)
        self.hidden, self.output = torch.empty(block_rows, ffn_dim), torch.empty(block_rows, dim)
        self.flops = 2 * 2 * block_rows * dim * ffn_dim * self.blocks

    def once(self) -> float:
        import torch

        start = time.perf_counter()
        for _ in range(self.blocks):
            torch.matmul(self.x, self.w1, out=self.hidden)
            torch.matmul(self.hidden, self.w2, out=self.output)
        return self.flops / (time.perf_counter() - start) / 1e9

    def rate(self, repeats: int = 5) -> float:
        """The median of `repeats` probes after a warm-up."""
        self.once()
        return statistics.median(self.once() for _ in range(repeats))


def _product_flops(self_shape, first_shape, second_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `self += first @ second`, matrices or batches of them (shapes as `FlopCounterMode` passes them)."""
    *batch, rows, inner = first_shape
    return 2 * rows * inner * second_shape[-1] * (batch[0] if batch else 1)


def _fused_linear_flops(inputs_shape, *shapes, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's fused linear (`mkldnn::_linear_pointwise`): `(..., in) @ weight.T`, the weight `(out,
    in)` second (`.default`) or third (`.binary`, after the tensor it adds)."""
    weight_shape = shapes[1] if len(shapes) == 4 else shapes[0]  # .binary: (other, weight, bias, attr)
    rows = math.prod(inputs_shape[:-1])
    return 2 * rows * inputs_shape[-1] * weight_shape[0]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `F.scaled_dot_product_attention`'s CPU flash kernel (the MiT backbone's attention):
    `q @ k^T` and `softmax(...) @ v`, over `(batch, heads, length, dim)` queries and `(..., keys, dim)` keys."""
    *leading, length, dim = query_shape
    return 2 * math.prod(leading) * length * key_shape[-2] * (dim + value_shape[-1])


def counted_flops(function) -> int:
    """FLOPs of the matrix products and convolutions `function()` runs, the in-place products (`addmm_`,
    `baddbmm_`), oneDNN's fused linears (`dynamite_hf.inference.feed_forward`) and the CPU flash attention, which
    `FlopCounterMode` does not know, included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    in_place = {torch.ops.aten.addmm_: _product_flops, torch.ops.aten.baddbmm_: _product_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        in_place[torch.ops.mkldnn._linear_pointwise] = _fused_linear_flops
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        in_place[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_attention_flops
    with FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        function()
    return counter.get_total_flops()


def reset_peak_memory() -> None:
    """Start the peak-RSS count afresh (Linux: `VmHWM` reset through /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's (ru_maxrss)


def peak_memory_mb() -> float:
    """Peak resident memory since `reset_peak_memory` (Linux), else since the process started."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    preset: str, height: int, width: int, repeats: int, threads: int, int8: bool = False, backend: str = "auto"
) -> dict:
    """Time `preset` (a preset name, random weights; or a saved model folder, its own config and weights) on
    `backend` (`dynamite_hf.inference`)."""
    import torch

    from dynamite_hf import PRESETS, Click, DynamiteConfig, DynamiteImageProcessor, DynamiteModel
    from dynamite_hf.clicks import clicks_to_inputs
    from dynamite_hf.inference import select_backend
    from dynamite_hf.inference.runtime import tune_cpu_allocator
    from dynamite_hf.predictor import load_processor

    tune_cpu_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if preset in PRESETS:
        model = DynamiteModel(DynamiteConfig.from_preset(preset)).eval()
        processor = DynamiteImageProcessor.from_preset(preset)
    else:
        model = DynamiteModel.from_pretrained(preset).eval()
        processor = load_processor(preset).image_processor
    if int8:
        from dynamite_hf.inference.int8 import quantize_int8

        quantize_int8(model)
    runner = select_backend(model, backend)
    divisor = processor.size_divisor
    padded = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
    pixel_values = torch.randn(1, 3, *padded)
    sizes = [(height, width)]

    config = model.config
    probe = GemmProbe(
        padded[0] // 4 * padded[1] // 4, config.hidden_dim, config.decoder_ffn_dim, getattr(runner, "block_rows", 4096)
    )
    beside = {}  # stage -> the GEMM rates probed after each of its timed runs

    def timed(function, count, stage=None):
        times, result = [], None
        for _ in range(count):
            result = None  # the last run's output is not held while the next one runs (two images' features)
            start = time.perf_counter()
            result = function()
            times.append(time.perf_counter() - start)
            if stage is not None:
                beside.setdefault(stage, []).append(probe.once())
        return statistics.median(times), result

    with torch.inference_mode():
        gemm_before = probe.rate()
        reset_peak_memory()  # the peak below is the stages'
        runner.get_image_embeddings(pixel_values)  # warm-up
        image_seconds, features = timed(lambda: runner.get_image_embeddings(pixel_values), repeats, "image")
        runs, click_seconds = {}, {}
        for instances in (2, 5, 10):
            clicks = [
                Click(k, (k + 0.5) * height / instances, (k + 0.5) * width / instances, k, "model")
                for k in range(instances)
            ] + [Click(None, 5.0, 5.0, instances, "model")]
            clicks = clicks_to_inputs([clicks])

            def run(clicks=clicks):
                output = runner(image_embeddings=features, **clicks)
                result = processor.post_process_masks(  # the label map, as the predictor makes it per click
                    output.pred_masks,
                    output.query_labels,
                    sizes,
                    sizes,
                    refine_boundaries=False,
                    return_masks=False,
                    return_scores=False,
                )
                return result[0]["label_map"]

            run()  # warm-up
            click_seconds[instances], _ = timed(run, repeats, f"click_{instances}")
            runs[f"click_{instances}"] = run
            if instances == 5:  # the original's own driver measured one image and clicks of 2 and 5 instances
                peak_5_mb = peak_memory_mb()
        peak_mb = peak_memory_mb()
        refine_image_s, refine_click_s, refine_preview_s = measure_refinement(processor, height, width, repeats, timed)
        flops = {"image": counted_flops(lambda: runner.get_image_embeddings(pixel_values))}
        flops.update({stage: counted_flops(run) for stage, run in runs.items()})
        gemm_after = probe.rate()
    return {
        "preset": preset + (" (int8)" if int8 else "") + (f" [{backend}]" if backend != "auto" else ""),
        "size": f"{height}x{width}",
        "image_s": image_seconds,
        "click_s": click_seconds,
        "peak_mb": peak_mb,
        "peak_5_mb": peak_5_mb,
        "features_mb": features.nbytes() / 2**20,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop": {stage: count / 1e9 for stage, count in flops.items()},
        "gemm_gflops": [gemm_before, gemm_after],
        "gemm_gflops_beside": {stage: statistics.median(rates) for stage, rates in beside.items()},
        "refine_image_s": refine_image_s,
        "refine_click_s": refine_click_s,
        "refine_preview_s": refine_preview_s,
    }


def measure_refinement(
    processor, height: int, width: int, repeats: int, timed
) -> tuple[float, dict[int, float], dict[int, float]]:
    """Seconds of the boundary refinement (`dynamite_hf.models.dynamite.refinement`, on where the processor's
    `guided_filter_radius` is positive, as in the bundled model; its radius 8 otherwise) at `height x width`:
    building the image's filter (once per image, on its first click) and, per click of 2 / 5 / 10 instances,
    filtering the instance probabilities and fusing them (the output at the same size); and the same per click
    for the app's preview (`post_process_masks(..., preview=True)`: probabilities at half the size, the filter
    fitted there and applied at the full size)."""
    import torch

    from dynamite_hf.models.dynamite.image_processing_dynamite import label_instances
    from dynamite_hf.models.dynamite.refinement import GuidedFilter, half_radius, halve

    radius = processor.guided_filter_radius or 8
    eps = processor.guided_filter_eps
    guide = torch.rand(3, height, width)
    image_s, guided = timed(lambda: GuidedFilter(guide, radius, eps), repeats)
    preview_filter = GuidedFilter(halve(guide), half_radius(radius), eps)
    click_s, preview_s = {}, {}
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)
    for instances in (2, 5, 10):
        # Round objects along the diagonal where the benchmark's clicks are, a radius of a third of their spacing:
        # logits +6 at the centre, 0 at the radius, and the background at 0 (the filter works near objects only).
        radius = min(height, width) / instances / 3
        logits = torch.stack(
            [
                6.0
                - 6.0
                * ((rows - (k + 0.5) * height / instances) ** 2 + (cols - (k + 0.5) * width / instances) ** 2).sqrt()
                / radius
                for k in range(instances)
            ]
            + [torch.zeros(height, width)]
        )
        probabilities = (logits / processor.guided_filter_temperature).softmax(0)

        # The preview's probabilities come from the model at half the size (logits upsampled 2x, not 4x).
        half_probabilities = halve(probabilities[:instances])

        def refine(probabilities=probabilities, half=half_probabilities, instances=instances, preview=False):
            refined = preview_filter(half, guide) if preview else guided(probabilities[:instances], guide)
            return label_instances(refined, 1.0 - refined.sum(0))

        refine()  # warm-up
        click_s[instances], _ = timed(refine, repeats)
        preview_s[instances], _ = timed(lambda refine=refine: refine(preview=True), repeats)
    return image_s, click_s, preview_s


def rate_row(result: dict) -> str:
    """A row of the compute-rate table: the GEMM probes (before, beside the stages' runs: lowest to highest
    median, after), then per stage GFLOP, GFLOP/s and the fraction of the GEMM rate probed beside its runs."""
    beside = result["gemm_gflops_beside"]
    seconds = {"image": result["image_s"], **{f"click_{k}": v for k, v in result["click_s"].items()}}
    cells = []
    for stage in ("image", "click_2", "click_5", "click_10"):
        gflop = result["gflop"][stage]
        cells.append(f"{gflop:.1f} / {gflop / seconds[stage]:.0f} / {gflop / seconds[stage] / beside[stage]:.2f}")
    before, after = result["gemm_gflops"]
    return (
        f"| {result['preset']} | {result['size']} | {before:.0f} / {min(beside.values()):.0f}-"
        f"{max(beside.values()):.0f} / {after:.0f} | " + " | ".join(cells) + f" | {result['features_mb']:.0f} |"
    )


def main(argv: list[str] | None = None) -> None:
    from dynamite_hf import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=PRESETS, help="presets to time (default: all, unless --models)")
    parser.add_argument(
        "--models", nargs="+", default=[], help="saved model folders (save_pretrained) to time, with their own weights"
    )
    parser.add_argument("--size", default="800x1200", help="input HEIGHTxWIDTH before padding (default 800x1200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is printed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--int8", action="store_true", help="with the opt-in int8 FFN layers (dynamite_hf.inference.int8)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "eager", "cpu"],
        help="how the model runs (dynamite_hf.inference; default auto: the CPU click decoder on a CPU)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for folder in args.models:
        if not (Path(folder) / "config.json").is_file():
            parser.error(
                f"--models: expected a model folder holding config.json (save_pretrained's output), got {folder!r}"
            )
    if args.presets is None:
        args.presets = [] if args.models else list(PRESETS)
    targets = [*args.presets, *args.models]
    height, width = (int(v) for v in args.size.lower().split("x"))

    if args.child:
        print(json.dumps(measure(targets[0], height, width, args.repeats, args.threads, args.int8, args.backend)))
        return

    results = []
    print(
        "| preset | params (M) | input | per image (s) | click, 2 inst (s) | 5 inst (s) | 10 inst (s) | "
        "peak RSS (MB): up to 5 inst / 10 inst |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset in targets:
        command = [sys.executable, __file__, "--child", "--presets" if preset in PRESETS else "--models", preset]
        command += ["--size", args.size]
        command += ["--repeats", str(args.repeats), "--threads", str(args.threads)] + ["--int8"] * args.int8
        command += ["--backend", args.backend]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"| {preset} | failed: {completed.stderr.strip().splitlines()[-1]} |")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(result)
        clicks = result["click_s"]
        print(
            f"| {preset} | {result['parameters_m']:.1f} | {result['size']} | {result['image_s']:.2f} | "
            f"{clicks['2']:.3f} | {clicks['5']:.3f} | {clicks['10']:.3f} | {result['peak_5_mb']:.0f} / {result['peak_mb']:.0f} |",
            flush=True,
        )
    print()
    print(
        "| preset | input | GEMM GFLOP/s before / beside the stages / after | per image: GFLOP / GFLOP/s / of GEMM | "
        "click, 2 inst | 5 inst | 10 inst | one image's features (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        if args.int8:  # the flop counter does not see the quantized layers' products
            print(f"| {result['preset']} | {result['size']} | not measured: int8 layers are not counted |")
        else:
            print(rate_row(result))
    print()
    print(
        "| preset | input | boundary refinement (`guided_filter_radius`): per image (s) | per click, 2 inst (s) | "
        "5 inst (s) | 10 inst (s) | app preview, 2 inst (s) | 5 inst (s) | 10 inst (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        refine, preview = result["refine_click_s"], result["refine_preview_s"]
        print(
            f"| {result['preset']} | {result['size']} | {result['refine_image_s']:.3f} | {refine['2']:.3f} | "
            f"{refine['5']:.3f} | {refine['10']:.3f} | {preview['2']:.3f} | {preview['5']:.3f} | {preview['10']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
