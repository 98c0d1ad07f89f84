#!/usr/bin/env python
"""Add layers to a trained model's interactive transformer, so that it starts from almost the same function.

    python scripts/grow_model.py --model models/dynamite-mobilenet-v2 --encoder-layers 9 --decoder-layers 2 \
        --output runs/grown

New encoder layers go after the existing ones (they go on visiting the three levels round-robin), new decoder
layers after the existing decoder layer(s). The model is loaded with the larger layer counts, so `from_pretrained`
initialises the new layers as a new model's (the original's scheme), except the last projection of
each residual branch (the attention output projections and the FFN's second linear), which is zero: a new layer
then only re-normalises its input (its LayerNorms start at weight 1 and bias 0), and the grown model's masks are
close to the model's own (the script prints the largest change of the mask logits on a random image). Fine-tuning
then trains the new layers from there (`train_accelerate.py --from-pretrained OUTPUT`), as residual branches
initialised at zero are trained in ResNets and ReZero.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


def zero_residual_branches(layer: nn.Module) -> None:
    """Zero the output projection of every attention and the second linear of the FFN of `layer`."""
    for name, module in layer.named_modules():
        if name.endswith("attention.out_proj") or name.endswith("ffn.linear2"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


def grow(path: str | Path, encoder_layers: int, decoder_layers: int, seed: int = 0):
    """The model saved in `path` with the given layer counts: its weights, and new layers initialised by the model's
    `_init_weights` (`from_pretrained` fills the weights the checkpoint lacks) with zero residual branches."""
    from dynamite_hf import DynamiteConfig, DynamiteModel

    config = DynamiteConfig.from_pretrained(path)
    if encoder_layers < config.encoder_layers or decoder_layers < config.decoder_layers:
        raise ValueError(
            f"grow() adds layers: encoder_layers / decoder_layers must be at least the model's "
            f"{config.encoder_layers} / {config.decoder_layers}, got {encoder_layers} / {decoder_layers}"
        )
    if config.decoder_layers == 0 and decoder_layers > 0:
        # The first decoder layer's inputs are the cached mask features; a zero branch would still change the
        # final prediction's features (two LayerNorms), so the function would not be kept.
        raise ValueError("grow() cannot add a decoder to a model without one (decoder_layers 0)")
    torch.manual_seed(seed)
    grown = DynamiteModel.from_pretrained(path, encoder_layers=encoder_layers, decoder_layers=decoder_layers)
    transformer = grown.interactive_transformer
    for layer in [
        *transformer.encoder_layers[config.encoder_layers :],
        *transformer.decoder_layers[config.decoder_layers :],
    ]:
        zero_residual_branches(layer)
    return grown.eval()


def main(argv: list[str] | None = None) -> None:
    from dynamite_hf import Click, DynamiteImageProcessor, DynamiteModel, save_model_folder
    from dynamite_hf.clicks import clicks_to_inputs
    from dynamite_hf.training.trainer import weights_digest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained folder")
    parser.add_argument("--encoder-layers", type=int, required=True, help="the grown model's encoder layers")
    parser.add_argument("--decoder-layers", type=int, required=True, help="the grown model's decoder layers")
    parser.add_argument("--seed", type=int, default=0, help="initialises the new layers (default 0)")
    parser.add_argument("--output", required=True, help="the save_pretrained folder to write")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model: {args.model!r} is not a save_pretrained folder (no config.json)")

    model = DynamiteModel.from_pretrained(args.model).eval()
    try:
        grown = grow(args.model, args.encoder_layers, args.decoder_layers, args.seed)
    except ValueError as error:
        parser.error(str(error))
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 256, 320)
    clicks = clicks_to_inputs([[Click(0, 100.0, 120.0, 0, "model"), Click(1, 180.0, 250.0, 1, "model")]])
    with torch.inference_mode():
        before, after = (m(pixel_values=pixel_values, **clicks).pred_masks for m in (model, grown))
    change = (after - before).abs().max().item() / before.abs().max().item()
    save_model_folder(grown, DynamiteImageProcessor.from_pretrained(args.model), args.output)
    print(
        f"wrote {args.output}: {args.encoder_layers} encoder / {args.decoder_layers} decoder layers (was "
        f"{model.config.encoder_layers} / {model.config.decoder_layers}); largest logit change on a random image "
        f"{change:.1%} of the largest logit; weights digest {weights_digest(grown)}"
    )


if __name__ == "__main__":
    main()
