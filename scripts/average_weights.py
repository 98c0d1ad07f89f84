#!/usr/bin/env python
"""Average the weights of fine-tuned models of one architecture (a "model soup", Wortsman et al., ICML 2022).

    python scripts/average_weights.py --models runs/a runs/b --weights 0.25 0.75 --output runs/soup

Models fine-tuned from a common ancestor usually lie in one basin of the loss, and a weighted average of their
weights often keeps the strengths of each. Every float tensor is averaged; integer buffers are taken from the
first model. The output is a `save_pretrained` folder with the first model's config and processor (including its
inference settings, such as the guided filter).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """`sum_i weights[i] * state_dicts[i]` for float tensors (computed in float64); others from the first."""
    averaged = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            total = sum(w * sd[key].double() for w, sd in zip(weights, state_dicts, strict=True))
            averaged[key] = total.to(first.dtype)
        else:
            averaged[key] = first.clone()
    return averaged


def main(argv: list[str] | None = None) -> None:
    from dynamite_hf import DynamiteImageProcessor, DynamiteModel, save_model_folder
    from dynamite_hf.training.trainer import weights_digest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="two or more save_pretrained folders")
    parser.add_argument(
        "--weights", nargs="+", type=float, help="one per model, positive, summing to 1 (default: equal)"
    )
    parser.add_argument("--output", required=True, help="the save_pretrained folder to write")
    args = parser.parse_args(argv)

    if len(args.models) < 2:
        parser.error(f"--models needs two or more folders, got {len(args.models)}")
    weights = args.weights or [1.0 / len(args.models)] * len(args.models)
    if len(weights) != len(args.models):
        parser.error(f"--weights needs one weight per model ({len(args.models)}), got {len(weights)}")
    if any(not w > 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        parser.error(f"--weights must be positive and sum to 1, got {weights}")
    for folder in args.models:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"--models: {folder!r} is not a save_pretrained folder (no config.json)")

    models = [DynamiteModel.from_pretrained(folder) for folder in args.models]
    state_dicts = [model.state_dict() for model in models]
    for folder, state_dict in zip(args.models[1:], state_dicts[1:], strict=True):
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        expected = {k: tuple(v.shape) for k, v in state_dicts[0].items()}
        if shapes != expected:
            different = sorted(set(shapes.items()) ^ set(expected.items()))[:3]
            raise SystemExit(
                f"--models: {folder!r} is not the architecture of {args.models[0]!r} (keys or shapes differ, "
                f"e.g. {different})"
            )
    averaged = average_state_dicts(state_dicts, weights)
    models[0].load_state_dict(averaged)
    save_model_folder(models[0], DynamiteImageProcessor.from_pretrained(args.models[0]), args.output)
    mix = " + ".join(f"{w:g} x {folder}" for w, folder in zip(weights, args.models, strict=True))
    print(f"wrote {args.output}: {mix}; weights digest {weights_digest(models[0])}")


if __name__ == "__main__":
    main()
