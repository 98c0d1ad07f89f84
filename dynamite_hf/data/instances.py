"""Instance-segmentation data as Hugging Face `datasets`: one schema read by training and evaluation, and the
readers that turn the layouts users have on disk into rows of it. The benchmark readers
(`dynamite_hf.data.benchmarks`) are imported from here, never the other way round.

Columns (`INSTANCE_FEATURES`):

| column | type | meaning |
|---|---|---|
| `sample_id` | string | a stable name, `<source>/<image stem>` |
| `image` | `datasets.Image` | the encoded file's bytes, embedded (JPEG stays JPEG) |
| `height`, `width` | int32 | image size |
| `masks` | list of `{"size": [H, W], "counts": str}` | one COCO RLE per instance, possibly overlapping |
| `areas` | list of int64 | pixel count of each mask |
| `categories` | list of int32 | class id of each instance, -1 when the source has none |
| `ignore` | RLE or None | pixels left out (void / uncertain band) |

Rows are self-contained, so a dataset can be saved with `save_to_disk` (memory-mapped Arrow shards), pushed with
`push_to_hub`, or read lazily with `to_iterable_dataset()`; building goes through `Dataset.from_generator`, which
writes in batches, so memory stays bounded at COCO+LVIS scale.

The readers of each layout are here; `dynamite_hf.data.sources.read_source` picks one from a source spec.
"""

from __future__ import annotations

import io
import logging
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..export import mask_to_rle
from .benchmarks import IMAGE_SUFFIXES, EvaluationSample, find_by_stem, read_dataset

logger = logging.getLogger(__name__)


def instance_features():
    """The `datasets.Features` of the schema above."""
    import datasets

    rle = datasets.Features({"size": datasets.Sequence(datasets.Value("int32")), "counts": datasets.Value("string")})
    return datasets.Features(
        {
            "sample_id": datasets.Value("string"),
            "image": datasets.Image(),
            "height": datasets.Value("int32"),
            "width": datasets.Value("int32"),
            "masks": [rle],  # a list of structs (Sequence would store a struct of lists)
            "areas": datasets.Sequence(datasets.Value("int64")),
            "categories": datasets.Sequence(datasets.Value("int32")),
            "ignore": rle,
        }
    )


def decode_rle(rle: dict) -> np.ndarray:
    """`(H, W)` bool mask from a row's RLE struct."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts.encode("ascii")}).astype(bool)


@dataclass
class InstanceExample:
    """One image and its instances before encoding.

    Attributes:
        sample_id: stable name.
        image_path: the image file (its bytes are embedded as they are).
        masks: per instance `(H, W)` bool, in the image's size.
        categories: per instance class id (-1 when unknown).
        ignore: `(H, W)` bool of ignored pixels, or None.
        image_bytes: the encoded image when it is made in memory (generated sources); `image_path` then only
            names it.
    """

    sample_id: str
    image_path: Path | str
    masks: list[np.ndarray]
    categories: list[int] = field(default_factory=list)
    ignore: np.ndarray | None = None
    image_bytes: bytes | None = None


@dataclass
class SkipCounter:
    """Counts what was skipped and why, warning the first few times for each reason."""

    counts: Counter = field(default_factory=Counter)
    max_warnings: int = 5

    def skip(self, reason: str, what: str) -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= self.max_warnings:
            warnings.warn(f"skipped {what}: {reason}", stacklevel=2)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def encode_example(example: InstanceExample, skipped: SkipCounter, keep_empty: bool = False) -> dict | None:
    """A schema row from an example, or None (counted in `skipped`) when the image cannot be read, the masks do
    not fit it, or no instance has any pixel. Empty instances are dropped and counted, unless `keep_empty`
    (evaluation sets keep objects that smaller ones cover completely)."""
    try:
        data = example.image_bytes if example.image_bytes is not None else Path(example.image_path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as error:
        skipped.skip("unreadable image", f"{example.sample_id} ({error})")
        return None
    masks, categories = [], []
    for index, mask in enumerate(example.masks):
        if mask.shape != (height, width):
            skipped.skip("mask size differs from the image", f"{example.sample_id} ({mask.shape} vs {(height, width)})")
            return None
        if not keep_empty and not mask.any():
            skipped.skip("empty mask", f"instance {index} of {example.sample_id}")
            continue
        masks.append(mask)
        categories.append(int(example.categories[index]) if example.categories else -1)
    if not any(mask.any() for mask in masks):
        skipped.skip("no instances", example.sample_id)
        return None
    return {
        "sample_id": example.sample_id,
        "image": {"bytes": data, "path": Path(example.image_path).name},
        "height": height,
        "width": width,
        "masks": [mask_to_rle(mask) for mask in masks],
        "areas": [int(mask.sum()) for mask in masks],
        "categories": categories,
        "ignore": mask_to_rle(example.ignore) if example.ignore is not None else None,
    }


def build_dataset(
    examples: Iterable[InstanceExample],
    skipped: SkipCounter | None = None,
    keep_empty: bool = False,
    cache_dir: str | None = None,
):
    """A `datasets.Dataset` of the schema from examples (read lazily, written in batches); what cannot be used
    is skipped with a warning and counted in `skipped` (see `encode_example`)."""
    import datasets

    skipped = skipped if skipped is not None else SkipCounter()

    def rows():
        for example in examples:
            row = encode_example(example, skipped, keep_empty)
            if row is not None:
                yield row

    # A fresh fingerprint: the examples are read once, never hashed (a generator cannot be).
    return datasets.Dataset.from_generator(
        rows, features=instance_features(), cache_dir=cache_dir, fingerprint=uuid.uuid4().hex
    )


# -- sources ----------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def read_yolo(root: Path, split: str = "train2017", prefix: str = "yolo") -> Iterator[InstanceExample]:
    """YOLO segmentation layout (coco128-seg): polygons normalised to [0, 1], rasterised with OpenCV."""
    import cv2

    images, labels = root / "images" / split, root / "labels" / split
    if not images.is_dir():
        raise FileNotFoundError(f"{root} does not look like a YOLO segmentation set: missing images/{split}")
    for image_path in _image_files(images):
        label_path = labels / f"{image_path.stem}.txt"
        size = _image_size(image_path)
        if size is None or not label_path.is_file():
            # encode_example reports the unreadable image; a missing label file is an image without instances
            yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, [])
            continue
        width, height = size
        masks, categories = [], []
        for line in label_path.read_text().splitlines():
            values = line.split()
            if len(values) < 7:
                continue
            points = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * (width, height)
            mask = np.zeros((height, width), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
            masks.append(mask.astype(bool))
            categories.append(int(values[0]))
        yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, masks, categories)


def _mask_for(masks: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        found = find_by_stem(masks, stem + suffix)
        if found is not None:
            return found
    return None


def read_id_folder(
    images: Path, masks: Path, prefix: str = "folder", mask_suffixes: tuple[str, ...] = ("", "_mask")
) -> Iterator[InstanceExample]:
    """Images with instance-id masks (0 background, 255 void, every other value an instance), matched by stem
    (`<stem>.png` or `<stem>_mask.png`, the Penn-Fudan naming)."""
    for image_path in _image_files(images):
        mask_path = _mask_for(masks, image_path.stem, mask_suffixes)
        if mask_path is None:
            yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, [])
            continue
        ids = np.asarray(Image.open(mask_path))
        if ids.ndim == 3:
            ids = ids[..., 0]
        void = ids == 255
        values = [int(v) for v in np.unique(ids) if v not in (0, 255)]
        yield InstanceExample(
            f"{prefix}/{image_path.stem}", image_path, [ids == v for v in values], [], void if void.any() else None
        )


def split_components(mask: np.ndarray, min_fraction: float = 0.01) -> list[np.ndarray]:
    """The connected components (8-connected) of a figure-ground mask holding at least `min_fraction` of the
    image, as separate instances; smaller specks are dropped. A mask of one component comes back whole."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    minimum = min_fraction * mask.size
    kept = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= minimum]
    if len(kept) <= 1:
        return [mask]
    return [labels == c for c in kept]


def read_binary_folder(
    images: Path,
    masks: Path,
    prefix: str = "binary",
    mask_suffixes: tuple[str, ...] = ("",),
    components: bool = False,
) -> Iterator[InstanceExample]:
    """Images with figure-ground masks (grey > 128 is the object; RGB masks are converted to grey first, masks
    of another size are resized to the image, nearest neighbour). With `components`, a mask of several
    separate objects (DUTS often puts several salient things in one mask) becomes one instance per connected
    component (`split_components`)."""
    for image_path in _image_files(images):
        mask_path = _mask_for(masks, image_path.stem, mask_suffixes)
        if mask_path is None:
            yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, [])
            continue
        with Image.open(mask_path) as mask_image:
            grey = mask_image.convert("L")
            size = _image_size(image_path)
            if size is not None and grey.size != size:  # Weizmann horses ship masks at the grey images' size
                grey = grey.resize(size, Image.NEAREST)
            grey = np.asarray(grey)
        foreground = grey > 128
        yield InstanceExample(
            f"{prefix}/{image_path.stem}", image_path, split_components(foreground) if components else [foreground]
        )


def read_clothing(root: Path, prefix: str = "clothing", min_garment_pixels: int = 400) -> Iterator[InstanceExample]:
    """Clothing Co-Parsing: the person (label > 0) and each garment (connected components of each label other
    than skin and hair, at least `min_garment_pixels`)."""
    import cv2
    from scipy.io import loadmat

    annotations = root / "annotations" / "pixel-level"
    if not annotations.is_dir():
        raise FileNotFoundError(f"{root} does not look like Clothing Co-Parsing: missing annotations/pixel-level")
    names = (
        [str(v[0]) for v in loadmat(root / "label_list.mat")["label_list"][0]]
        if (root / "label_list.mat").is_file()
        else []
    )
    body = {i for i, n in enumerate(names) if n in ("skin", "hair", "null")}
    for mat_path in sorted(annotations.glob("*.mat")):
        image_path = root / "photos" / f"{mat_path.stem}.jpg"
        labels = loadmat(mat_path)["groundtruth"]
        masks, categories = [labels > 0], [0]
        for value in np.unique(labels):
            if value == 0 or int(value) in body:
                continue
            count, components = cv2.connectedComponents((labels == value).astype(np.uint8))
            for component in range(1, count):
                mask = components == component
                if mask.sum() >= min_garment_pixels:
                    masks.append(mask)
                    categories.append(int(value))
        yield InstanceExample(f"{prefix}/{mat_path.stem}", image_path, masks, categories)


def read_coco_json(annotations: Path, images: Path, prefix: str = "coco") -> Iterator[InstanceExample]:
    """COCO or LVIS instances json (non-crowd annotations; LVIS images named by their URL)."""
    from pycocotools.coco import COCO

    coco = COCO(str(annotations))
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        file_name = info.get("file_name") or Path(info["coco_url"]).name
        yield InstanceExample(
            f"{prefix}/{image_id}",
            images / file_name,
            [coco.annToMask(a).astype(bool) for a in anns],
            [int(a.get("category_id", -1)) for a in anns],
        )


def read_benchmark(name: str, root: Path, prefix: str | None = None) -> Iterator[InstanceExample]:
    """A benchmark reader of `dynamite_hf.data.benchmarks` (multi-instance mode: one row per image)."""
    for sample in read_dataset(name, root, mode="multi"):
        yield example_from_sample(sample, f"{prefix or name}/")


def example_from_sample(sample: EvaluationSample, prefix: str = "") -> InstanceExample:
    """An `InstanceExample` of an evaluation sample: one mask per object (already non-overlapping)."""
    masks = [sample.instance_map == k + 1 for k in range(sample.num_objects)]
    return InstanceExample(f"{prefix}{sample.sample_id}", sample.image_path, masks, [], sample.ignore)


def to_hf_dataset(samples: list[EvaluationSample]):
    """Evaluation samples as a Hugging Face `datasets.Dataset` of this schema (embedded image, one RLE per object
    in instance order, already non-overlapping, and the ignore mask), for `save_to_disk` / `push_to_hub`."""
    return build_dataset([example_from_sample(sample) for sample in samples], keep_empty=True)


def from_hf_row(row: dict, image_path: Path | None = None) -> EvaluationSample:
    """An `EvaluationSample` back from a `to_hf_dataset` row (the image stays in the dataset's `image` column;
    `image_path` names a file for it when the sample is evaluated from disk)."""
    instance_map = np.zeros((row["height"], row["width"]), dtype=np.int32)
    for index, rle in enumerate(row["masks"]):
        instance_map[decode_rle(rle)] = index + 1
    ignore = decode_rle(row["ignore"]) if row.get("ignore") else None
    return EvaluationSample(row["sample_id"], image_path, instance_map, ignore, len(row["masks"]))
