"""Build a training / evaluation dataset (`datasets.Dataset`, schema in `dynamite_hf.data.instances`).

    python scripts/build_dataset.py --source yolo:../shared/data/coco128-seg --output data/coco128
    python scripts/build_dataset.py --source folder:PennFudanPed/PNGImages:PennFudanPed/PedMasks \
        --source binary:DUTS-TR/DUTS-TR-Image:DUTS-TR/DUTS-TR-Mask --output data/mix
    python scripts/build_dataset.py --source coco:annotations/instances_train2017.json:train2017 \
        --output data/coco --push-to-hub user/coco-instances

Sources: yolo:ROOT[:SPLIT], folder:IMAGES:MASKS (instance ids), binary:IMAGES:MASKS (grey > 128),
clothing:ROOT (Clothing Co-Parsing), coco:JSON:IMAGES (COCO or LVIS), benchmark:NAME:ROOT (an evaluation reader).
Whatever cannot be used (an unreadable image, an image without its annotation or an annotation without its image,
an image without instances, an empty mask) is skipped with a warning; the summary counts and names every one
(the first 20 of each reason; all of them in OUTPUT/skipped.txt).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

from dynamite_hf.data.instances import SkipCounter, build_dataset
from dynamite_hf.data.sources import read_source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, help="KIND:PATH[:PATH], repeatable")
    parser.add_argument("--output", required=True, help="folder for save_to_disk")
    parser.add_argument("--limit", type=int, help="keep only the first N images of each source")
    parser.add_argument("--exclude", action="append", default=[], help="sample id to leave out, repeatable")
    parser.add_argument("--max-shard-size", default="500MB")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the dataset to this Hub repo")
    args = parser.parse_args(argv)

    skipped = SkipCounter()
    try:
        sources = [read_source(spec, skipped) for spec in args.source]
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    examples = itertools.chain.from_iterable(itertools.islice(s, args.limit) for s in sources)
    excluded = set(args.exclude)
    examples = (e for e in examples if e.sample_id not in excluded)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            dataset = build_dataset(examples, skipped)
        except (ValueError, OSError) as error:
            sys.exit(f"build_dataset.py: error: {error}")
    dataset.save_to_disk(args.output, max_shard_size=args.max_shard_size)
    instances = sum(len(areas) for areas in dataset["areas"])
    print(f"{len(dataset)} images, {instances} instances -> {args.output}")
    if skipped.total:
        print(f"skipped {skipped.total}:\n{skipped.summary()}")
        if any(len(names) > 20 for names in skipped.names.values()):
            listing = Path(args.output) / "skipped.txt"
            listing.write_text(skipped.listing())
            print(f"every skipped name: {listing}")
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")


if __name__ == "__main__":
    main()
