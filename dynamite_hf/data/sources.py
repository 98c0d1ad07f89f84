"""Source specs (`KIND:PATH[:PATH]`, as `scripts/build_dataset.py --source` takes them) -> examples of the
instance schema (`dynamite_hf.data.instances`), from the readers there or the generators of
`dynamite_hf.data.synthetic`.

Sources (`read_source`):

| kind | layout under the root | instances |
|---|---|---|
| `yolo` | `images/<split>/*.jpg`, `labels/<split>/*.txt` (`class x1 y1 x2 y2 ...`, normalised) | one per line |
| `folder` | `<images>/*`, `<masks>/*.png` instance ids (Penn-Fudan: `PNGImages/`, `PedMasks/<stem>_mask.png`) | one per id |
| `binary` | `<images>/*`, `<masks>/*` grey masks thresholded at 128 (DUTS-TR, Weizmann horses) | the foreground |
| `clothing` | `photos/*.jpg`, `annotations/pixel-level/NNNN.mat` (`groundtruth` label map) | the person, each garment |
| `coco` | a COCO / LVIS `instances_*.json` and its image folder | non-crowd annotations |
| `binary-components` | as `binary` | each connected component of at least 1 % of the image |
| `benchmark:<name>` | any `dynamite_hf.data.benchmarks` reader | the reader's objects |
| `synthetic:COUNT[:SEED[:KIND]]` | generated (`dynamite_hf.data.synthetic`): `shapes`, or `parts` (objects of several touching parts) | each object |
| `composite:OBJECTS:BACKGROUNDS:COUNT[:SEED]` | generated from two saved datasets: pasted cut-outs | each pasted object |
| `regions:PHOTOS:COUNT[:SEED[:KIND]]` | generated from a saved dataset's photos: colour-and-position clusters, anywhere (`free`) or beside the photo's objects (`background`) | 1-4 regions (+ the objects) |
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .instances import (
    InstanceExample,
    SkipCounter,
    load_instance_dataset,
    read_benchmark,
    read_binary_folder,
    read_clothing,
    read_coco_json,
    read_id_folder,
    read_yolo,
)
from .synthetic import REGION_KINDS, copy_paste_composites, photo_regions, textured_shapes

SOURCE_KINDS = (
    "yolo",
    "folder",
    "binary",
    "binary-components",
    "clothing",
    "coco",
    "benchmark:<name>",
    "synthetic",
    "composite",
    "regions",
)


def _load_saved(path: Path, spec: str):
    return load_instance_dataset(str(path), argument=f"source {spec!r}:")


def _count(spec: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"source {spec!r}: the image count must be a positive integer, got {text!r}")
    return value


def read_source(spec: str, skipped: SkipCounter | None = None) -> Iterator[InstanceExample]:
    """Examples from a source spec `KIND:PATH[:PATH]` (see the module docstring):

    - `yolo:ROOT[:SPLIT]`, `folder:IMAGES:MASKS`, `binary:IMAGES:MASKS`, `binary-components:IMAGES:MASKS`,
      `clothing:ROOT`, `coco:ANNOTATIONS.json:IMAGES`, `benchmark:NAME:ROOT`;
    - generated (`dynamite_hf.data.synthetic`): `synthetic:COUNT[:SEED[:KIND]]` textured shapes or parts,
      `composite:OBJECTS:BACKGROUNDS:COUNT[:SEED]` copy-paste composites from two saved datasets of this schema,
      `regions:PHOTOS:COUNT[:SEED[:KIND]]` regions of the photos of a saved dataset as the targets, anywhere
      (`free`, the default) or only beside the photo's own objects, which stay targets whole (`background`).

    Files the readers of `yolo`, `folder`, `binary` and `binary-components` pass over (an image without its
    annotation, an annotation without its image) are counted by name in `skipped`.
    """
    kind, _, rest = spec.partition(":")
    parts = [p for p in rest.split(":") if p]
    expected = {
        "yolo": (1, 2),
        "folder": (2, 2),
        "binary": (2, 2),
        "binary-components": (2, 2),
        "clothing": (1, 1),
        "coco": (2, 2),
        "benchmark": (2, 2),
        "synthetic": (1, 3),
        "composite": (3, 4),
        "regions": (2, 4),
    }
    if kind not in expected:
        raise ValueError(f"source {spec!r}: unknown kind {kind!r}; expected one of {SOURCE_KINDS}")
    low, high = expected[kind]
    if not low <= len(parts) <= high:
        raise ValueError(f"source {spec!r}: {kind} takes {low}-{high} ':'-separated parts, got {len(parts)}")
    if kind == "synthetic":
        seed = int(parts[1]) if len(parts) > 1 else 0
        return textured_shapes(_count(spec, parts[0]), seed=seed, kind=parts[2] if len(parts) > 2 else "shapes")
    paths = [Path(p) for p in parts]
    checked = {"yolo": 1, "benchmark": 0, "composite": 2, "regions": 1}.get(kind, len(paths))
    for path in paths[:checked]:
        if not path.exists():
            raise FileNotFoundError(f"source {spec!r}: {path} does not exist")
    if kind == "composite":
        seed = int(parts[3]) if len(parts) > 3 else 0
        return copy_paste_composites(
            _load_saved(paths[0], spec), _load_saved(paths[1], spec), _count(spec, parts[2]), seed
        )
    if kind == "regions":
        seed = int(parts[2]) if len(parts) > 2 else 0
        region_kind = parts[3] if len(parts) > 3 else "free"
        if region_kind not in REGION_KINDS:
            raise ValueError(f"source {spec!r}: the regions kind must be one of {REGION_KINDS}, got {region_kind!r}")
        return photo_regions(_load_saved(paths[0], spec), _count(spec, parts[1]), seed, kind=region_kind)
    if kind == "yolo":
        return read_yolo(paths[0], *(parts[1:] or []), prefix=paths[0].name, skipped=skipped)
    if kind == "folder":
        return read_id_folder(paths[0], paths[1], prefix=paths[0].parent.name, skipped=skipped)
    if kind in ("binary", "binary-components"):
        return read_binary_folder(
            paths[0], paths[1], prefix=paths[0].parent.name, components=kind == "binary-components", skipped=skipped
        )
    if kind == "clothing":
        return read_clothing(paths[0])
    if kind == "coco":
        return read_coco_json(paths[0], paths[1], prefix=paths[0].stem)
    return read_benchmark(parts[0], paths[1])
