#!/usr/bin/env python
"""Turn a training checkpoint (`<output-dir>/checkpoints/step_N`, Accelerate's `save_state`) into a
`save_pretrained` folder that `from_pretrained`, `scripts/evaluate.py` and the app load.

    python scripts/export_checkpoint.py --checkpoint runs/obey/checkpoints/step_800 --output runs/obey/step_800

The config comes from the checkpoint folder (`config.json`, written by the trainer) or from `--config` (a
save_pretrained folder or Hub id with the same architecture, e.g. the model the run started from).
"""

from __future__ import annotations

import argparse

from dynamite_hf.training.trainer import export_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/step_N folder")
    parser.add_argument("--output", required=True, help="the save_pretrained folder to write")
    parser.add_argument("--config", help="where the config comes from when the checkpoint has none")
    args = parser.parse_args(argv)
    try:
        export_checkpoint(args.checkpoint, args.output, args.config)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"{args.checkpoint} -> {args.output}")


if __name__ == "__main__":
    main()
