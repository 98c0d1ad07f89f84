#!/usr/bin/env python
"""Export a DynaMITe model's per-image and per-click stages to ONNX, for onnxruntime (Python, web, mobile).

    python scripts/export_onnx.py --model models/dynamite-mobilenet-v2 --output onnx/mobilenet-v2
    python scripts/export_onnx.py --model resnet50 --output onnx/r50     # a preset: random weights

Writes `image_encoder.onnx`, `click_decoder.onnx` and `dynamite_onnx.json` (see `dynamite_hf.inference.onnx`);
both graphs take any image size and any number of clicks. Load them with
`OnnxDynamiteModel.from_pretrained(OUTPUT)`. Needs `pip install -e ".[onnx]"`.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    from dynamite_hf import PRESETS, DynamiteConfig, DynamiteModel
    from dynamite_hf.inference.onnx import DEFAULT_OPSET, export_onnx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help=f"a save_pretrained folder, or a preset {PRESETS} (random weights)"
    )
    parser.add_argument("--output", required=True, help="the folder to write the graphs and their metadata to")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)

    if os.path.isdir(args.model):
        model = DynamiteModel.from_pretrained(args.model)
    elif args.model in PRESETS:
        print(
            f"--model {args.model!r} is a preset: exporting random weights (give a save_pretrained folder for trained ones)"
        )
        model = DynamiteModel(DynamiteConfig.from_preset(args.model))
    else:
        parser.error(f"--model must be a save_pretrained folder or one of the presets {PRESETS}, got {args.model!r}")
    start = time.perf_counter()
    paths = export_onnx(model, args.output, opset=args.opset)
    for role, path in paths.items():
        print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"exported in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
