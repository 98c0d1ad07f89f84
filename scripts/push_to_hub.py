#!/usr/bin/env python
"""Upload a model folder to the Hugging Face Hub in one commit: weights (as they are on disk), config.json and
preprocessor_config.json, the model's code (so transformers loads it with trust_remote_code=True, pipeline
included), the model card and the files it links to.

    python scripts/push_to_hub.py --model models/dynamite-mobilenet-v2 --repo-id user/dynamite-mobilenet-v2
    python scripts/push_to_hub.py --model runs/swin --repo-id user/dynamite-swin --local-dir runs/upload  # offline

With --local-dir nothing is uploaded: the folder that would be uploaded is written there, to inspect or to load
(`AutoModel.from_pretrained("runs/upload", trust_remote_code=True)`). Uploading needs a token (`hf auth login` or
HF_TOKEN). A folder without a README.md gets a model card made for it; the card's `model_id = "..."` lines name the
repository.
"""

from __future__ import annotations

import argparse

from dynamite_hf.hub import push_to_hub, write_hub_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model folder (written by save_pretrained or this project)")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, user-or-organisation/name")
    parser.add_argument("--local-dir", help="write the folder that would be uploaded here instead of uploading")
    parser.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    parser.add_argument("--commit-message", help="the commit's message (default: says what is uploaded)")
    args = parser.parse_args(argv)
    try:
        if args.local_dir:
            folder = write_hub_folder(args.model, args.local_dir, args.repo_id)
            files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
            print(f"wrote {folder} ({len(files)} files, not uploaded): {', '.join(files)}")
        else:
            commit = push_to_hub(args.model, args.repo_id, private=args.private, commit_message=args.commit_message)
            print(f"pushed {args.model} to {commit.commit_url}")
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
