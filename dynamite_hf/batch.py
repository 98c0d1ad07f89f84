"""Segment many images offline from recorded clicks: `segment_images` and the `dynamite-segment` command.

The clicks file is JSON:

    {"images": [
        {"image": "photos/cat.jpg",
         "clicks": [{"row": 120, "col": 300, "instance": 0},
                    {"row": 400, "col": 80, "instance": 1},
                    {"row": 10, "col": 10, "instance": null}]}
    ]}

`row`/`col` are y/x in pixels of the image file; `instance` is the 0-based instance (numbered 0..N-1, each
with at least one click) or `null` for a background click. Clicks are listed in the order they were made (it
sets their timestamps). Relative image paths are read from the clicks file's folder.

Limits, checked before any image is read: a clicks file of at most `--max-clicks-file-mb` (default 100), and per
image at most `--max-instances` instances and `--max-clicks` clicks (the predictor's defaults, 30 and 300: docs/app.md
"Limits"; 0 lifts one). Images over the image processor's `max_image_pixels` are refused before decoding.

For each image, `OUTPUT/<image stem>/` receives, by `--format`: `png` (label_map.png with instance ids and
label_map_palette.png in colour), `instances` (instance_000.png, ... 0/255), `coco` (coco.json with RLE) and
`overlay` (overlay.png). Every clicked instance is written, even when its mask came out empty (an all-zero
instance PNG, a COCO annotation of area 0); the command's summary names those. Two images with the same file
stem would write to the same folder, so a clicks file with such images is refused.

Under `accelerate launch --multi_gpu --num_processes N -m dynamite_hf.batch ...` (`--multi_gpu` on a CPU-only
machine too: without it accelerate starts one process) the images are shared among N processes (image i on process
i % N; `dynamite_hf.sharding`), each writes its images' folders, and the main process prints the summary: the files
are the same as a one-process run's when the processes compute on the CPU.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from . import export
from .clicks import clicks_from_json
from .models.dynamite.modeling_dynamite import DynamiteModel
from .predictor import DEFAULT_MAX_CLICKS, DEFAULT_MAX_INSTANCES, DynamitePredictor
from .sharding import current_processes, run_sharded

FORMATS = ("png", "instances", "coco", "overlay")
# A clicks file larger than this is refused before it is read (parsed, JSON takes about ten times its size).
DEFAULT_MAX_CLICKS_FILE_MB = 100


def read_jobs(
    path: str | Path,
    max_instances: int | None = DEFAULT_MAX_INSTANCES,
    max_clicks: int | None = DEFAULT_MAX_CLICKS,
    max_file_mb: float | None = DEFAULT_MAX_CLICKS_FILE_MB,
) -> list[dict[str, Any]]:
    """Parse and check a clicks file; image paths come back absolute, clicks as `Click`s (original frame).

    Every image's clicks are checked against `max_instances` and `max_clicks` here, before any image is read, and
    the file against `max_file_mb` before it is parsed (None: no limit).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ValueError(f"clicks file {str(path)!r} is not readable ({error})") from None
    if max_file_mb is not None and size > max_file_mb * 2**20:
        raise ValueError(
            f"clicks file {str(path)!r} holds {size / 2**20:.1f} MB, more than --max-clicks-file-mb {max_file_mb:g}; "
            "split it, or raise the limit (0: none)"
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"clicks file {str(path)!r} is not readable JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise ValueError(f"clicks file {str(path)!r} must hold {{'images': [...]}}")
    jobs, folders = [], {}
    for index, entry in enumerate(document["images"]):
        where = f"{path.name}: images[{index}]"
        if not isinstance(entry, dict) or "image" not in entry or not isinstance(entry.get("clicks"), list):
            raise ValueError(f"{where} must have 'image' and a list of 'clicks'")
        clicks = clicks_from_json(entry["clicks"], f"{where}.clicks")
        num_instances = len({click.instance for click in clicks if click.instance is not None})
        for count, limit, what, flag in (
            (num_instances, max_instances, "instances", "--max-instances"),
            (len(clicks), max_clicks, "clicks", "--max-clicks"),
        ):
            if limit is not None and count > limit:
                raise ValueError(
                    f"{where} has {count} {what}, more than {flag} {limit} (docs/app.md 'Limits'); raise it, or 0 for none"
                )
        image = (path.parent / entry["image"]).resolve()
        if image.stem in folders:
            raise ValueError(
                f"{where}: image {entry['image']!r} has the stem {image.stem!r} of images[{folders[image.stem]}], "
                f"so both would write OUTPUT/{image.stem}/; expected image files with distinct stems"
            )
        folders[image.stem] = index
        jobs.append({"image": image, "clicks": clicks})
    return jobs


@dataclass
class SegmentedImage:
    """What `segment_images` wrote for one image. Instances are 0-based, as in the clicks file."""

    image: Path
    folder: Path
    num_instances: int
    empty_instances: list[int]  # clicked, but no pixel went to them


def segment_images(
    predictor: DynamitePredictor,
    jobs: Sequence[dict[str, Any]],
    output_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    progress: bool = True,
) -> list[SegmentedImage]:
    """Replay each job's clicks on its image and write the requested files, one folder per image (a progress bar
    for two images or more, unless `progress` is False)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    results = []
    for job in tqdm(jobs, desc="segmenting", unit="image", disable=not progress or len(jobs) < 2):
        predictor.set_image(job["image"])
        # One prediction from all the clicks (their order sets the timestamps): what replaying them one by one
        # ends on, without a prediction and an undo step per click.
        predictor.set_clicks(job["clicks"])
        folder = Path(output_dir) / Path(job["image"]).stem
        folder.mkdir(parents=True, exist_ok=True)
        label_map, num_instances = predictor.label_map, predictor.num_instances
        if "png" in formats:
            export.save_label_map(label_map, folder / "label_map.png")
            export.save_palette_label_map(label_map, folder / "label_map_palette.png")
        if "instances" in formats:
            export.save_instance_masks(label_map, folder, num_instances=num_instances)
        if "coco" in formats:
            export.save_coco(
                label_map, folder / "coco.json", file_name=Path(job["image"]).name, num_instances=num_instances
            )
        if "overlay" in formats:
            overlay = export.render_overlay(predictor.image, label_map, predictor.clicks)
            Image.fromarray(overlay).save(folder / "overlay.png")
        empty = export.empty_instances(label_map, num_instances)
        results.append(SegmentedImage(Path(job["image"]), folder, num_instances, empty))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dynamite-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a save_pretrained folder (or Hub id, when online)")
    parser.add_argument("--clicks", required=True, help="the clicks JSON file (format above)")
    parser.add_argument("--output", required=True, help="folder for the results")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument(
        "--max-instances", type=_limit, default=DEFAULT_MAX_INSTANCES, help="instances per image (default %(default)s)"
    )
    parser.add_argument(
        "--max-clicks", type=_limit, default=DEFAULT_MAX_CLICKS, help="clicks per image (default %(default)s)"
    )
    parser.add_argument(
        "--max-clicks-file-mb", type=_limit, default=DEFAULT_MAX_CLICKS_FILE_MB, help="default %(default)s MB"
    )
    args = parser.parse_args(argv)
    try:
        jobs = read_jobs(args.clicks, args.max_instances, args.max_clicks, args.max_clicks_file_mb)
    except ValueError as error:
        parser.error(str(error))
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    processes = current_processes()
    model = DynamiteModel.from_pretrained(args.model).to(processes.device)
    predictor = DynamitePredictor(model, max_instances=args.max_instances, max_clicks=args.max_clicks)
    results = run_sharded(
        lambda share, progress: segment_images(predictor, share, args.output, formats, progress),
        jobs,
        processes,
        "segmenting",
        "image",
    )
    if not processes.is_main:
        return
    print(f"wrote {len(results)} image folder(s) to {args.output}")
    for result in results:
        if result.empty_instances:
            names = ", ".join(str(k) for k in result.empty_instances)
            plural = "s" if len(result.empty_instances) > 1 else ""
            verb = "have empty masks" if plural else "has an empty mask"
            print(f"{result.image.name}: instance{plural} {names} {verb} (exported all the same)")


def _limit(value: str) -> int | None:
    """A limit given on the command line: a positive integer, or 0 for none."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (0: no limit), got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0: no limit), got {value!r}")
    return number or None


if __name__ == "__main__":
    main()
