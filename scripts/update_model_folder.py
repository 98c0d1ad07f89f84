#!/usr/bin/env python
"""Rewrite a model folder's code, config.json and preprocessor_config.json as this package writes them now (weights,
model card and other files untouched), e.g. the bundled model after a change to `dynamite_hf/models/dynamite/`:

    python scripts/update_model_folder.py --model models/dynamite-mobilenet-v2
"""

from __future__ import annotations

import argparse

from dynamite_hf.hub import update_model_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model folder to update in place")
    args = parser.parse_args(argv)
    try:
        changed = update_model_folder(args.model)
    except ValueError as error:
        parser.error(str(error))
    print(f"{args.model}: " + (f"updated {', '.join(changed)}" if changed else "already up to date"))


if __name__ == "__main__":
    main()
