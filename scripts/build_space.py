#!/usr/bin/env python
"""Assemble a Hugging Face Space of the app in one folder: the app, the package, the model (a folder copied in, or a
Hub id the Space downloads when it starts), requirements.txt with PyTorch's CPU build, .gitattributes (binary files
in LFS) and the Space's README with the metadata its build reads (SDK version, Python version, hardware).

    python scripts/build_space.py --output runs/space                        # the bundled model
    python scripts/build_space.py --output runs/space --model user/dynamite  # a model on the Hub

Upload the folder as the Space's repository:

    hf repos create <user>/<space> --repo-type space --space-sdk gradio
    hf upload <user>/<space> runs/space . --repo-type space
"""

from __future__ import annotations

import argparse

from dynamite_hf.space import build_space


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the Space folder to write (new or empty)")
    parser.add_argument("--model", help="a model folder or a Hub id user/name (default: the bundled model)")
    args = parser.parse_args(argv)
    try:
        folder = build_space(args.output, args.model)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote the Space folder {folder}; upload it with: hf upload <user>/<space> {folder} . --repo-type space")


if __name__ == "__main__":
    main()
