#!/usr/bin/env python
"""A short end-to-end run: load a model, set an image, click two objects and the background, save the masks.

    python scripts/demo.py                                   # generated example scene, bundled model
    python scripts/demo.py --model path/to/model --image photo.jpg --click 120,300,0 --click 400,80,1

The default model is the app's: `$DYNAMITE_MODEL`, else the bundled `models/dynamite-mobilenet-v2`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dynamite_hf import DynamitePredictor
from dynamite_hf.app.gradio_app import load_app_model
from dynamite_hf.export import render_overlay, save_coco, save_palette_label_map
from dynamite_hf.inference.runtime import tune_cpu_allocator


def example_scene(height: int = 360, width: int = 540) -> tuple[np.ndarray, list[tuple[float, float, int | None]]]:
    """A generated scene (two objects on a textured background) and clicks on it: (row, col, instance)."""
    rng = np.random.default_rng(0)
    background = (rng.normal(0, 12, (height, width, 3)) + np.linspace(90, 160, width)[None, :, None]).clip(0, 255)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 80, 220, 260), fill=(200, 60, 50))
    draw.rectangle((300, 120, 480, 300), fill=(40, 90, 200))
    return np.asarray(image), [(170, 140, 0), (210, 390, 1), (30, 30, None), (120, 110, 0)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="save_pretrained folder or Hub id (default: the app's default model)")
    parser.add_argument("--image", help="image file (default: a generated example scene)")
    parser.add_argument("--click", action="append", help="ROW,COL,INSTANCE (INSTANCE 'bg' for background)")
    parser.add_argument("--output", default="demo_output", help="folder for overlay.png, masks and coco.json")
    args = parser.parse_args(argv)
    tune_cpu_allocator()

    model, label = load_app_model(args.model)
    print(f"model: {label}")
    image, clicks = example_scene()
    if args.image:
        image = args.image
    if args.click:
        clicks = [(float(r), float(c), None if i == "bg" else int(i)) for r, c, i in (s.split(",") for s in args.click)]

    predictor = DynamitePredictor(model)
    start = time.perf_counter()
    predictor.set_image(image)
    print(f"per-image stage: {time.perf_counter() - start:.2f} s")
    for row, col, instance in clicks:
        start = time.perf_counter()
        if instance is None:
            predictor.add_background_click(row, col)
        else:
            predictor.add_click(row, col, instance=instance)
        kind = "background" if instance is None else f"instance {instance}"
        print(f"click ({row:.0f}, {col:.0f}) on {kind}: {1000 * (time.perf_counter() - start):.0f} ms")

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_overlay(predictor.image, predictor.label_map, predictor.clicks)).save(output / "overlay.png")
    save_palette_label_map(predictor.label_map, output / "label_map.png")
    save_coco(predictor.label_map, output / "coco.json")
    print(f"{predictor.num_instances} instance(s); wrote overlay.png, label_map.png and coco.json to {output}/")


if __name__ == "__main__":
    main()
