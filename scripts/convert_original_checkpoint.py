#!/usr/bin/env python
"""Convert a released DynaMITe checkpoint (detectron2 .pth) into a `save_pretrained` folder.

    python scripts/convert_original_checkpoint.py --checkpoint swin_tiny.pth --output dynamite-swin-tiny
    python scripts/convert_original_checkpoint.py --checkpoint model.pth --output out --push-to-hub user/dynamite-r50

The pickle is read with `torch.load(weights_only=True)`, so it cannot run code. Every key must map onto the model
and every model weight must come from the checkpoint, or the conversion stops and names the keys.
"""

from __future__ import annotations

import argparse

from dynamite_hf import PRESETS, DynamiteConfig, DynamiteImageProcessor, DynamiteModel, save_model_folder
from dynamite_hf.conversion import infer_preset, load_original_state_dict, read_original_checkpoint
from dynamite_hf.hub import push_to_hub


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="released .pth file (its ['model'] holds the weights)")
    parser.add_argument("--output", required=True, help="folder to write config.json + model.safetensors into")
    parser.add_argument("--preset", choices=PRESETS, help="model to build (default: inferred from the keys)")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="also upload the model folder to this Hub repo (as scripts/push_to_hub.py)",
    )
    args = parser.parse_args(argv)

    state_dict = read_original_checkpoint(args.checkpoint)
    preset = args.preset or infer_preset(state_dict)
    model = DynamiteModel(DynamiteConfig.from_preset(preset)).eval()
    load_original_state_dict(model, state_dict)
    save_model_folder(model, DynamiteImageProcessor.from_preset(preset), args.output)
    print(f"converted {args.checkpoint} ({preset}, {len(state_dict)} tensors) -> {args.output}")
    if args.push_to_hub:
        # The folder as scripts/push_to_hub.py uploads it: weights, configs, code and a model card, in one commit.
        commit = push_to_hub(args.output, args.push_to_hub)
        print(f"pushed to {commit.commit_url}")


if __name__ == "__main__":
    main()
