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
import itertools
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


def is_hub_id(name: str) -> bool:
    """Whether `name` names a Hub dataset (`owner/name`) rather than a local folder. Anything else, and any name
    whose first part is a local folder (`data/coco129` beside a `data/` folder), is a local path: a mistyped path
    is never looked up on the Hub."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1 or name.startswith((".", "~")) or Path(name).exists():
        return False
    if Path(name.split("/")[0]).is_dir():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _build_hint(folder: Path) -> str:
    """The `scripts/build_dataset.py` command for a folder of raw images and annotations."""
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        sources = f"--source yolo:{folder}"
    else:
        sources = f"--source folder:{folder}/IMAGES:{folder}/MASKS (or binary:..., coco:..., see its --help)"
    return f"python scripts/build_dataset.py {sources} --output data/{folder.name}"


def load_instance_dataset(name: str, argument: str = "--dataset"):
    """A dataset of this schema from a `scripts/build_dataset.py` folder (`save_to_disk`; a `DatasetDict` gives its
    `train` split) or a Hub id `owner/name`, with errors that name `argument` and the way to build one."""
    import datasets

    if is_hub_id(name):
        return datasets.load_dataset(name, split="train")
    folder = Path(name).expanduser()
    if not folder.exists():
        import difflib

        parent = folder.parent if folder.parent.is_dir() else None
        near = difflib.get_close_matches(folder.name, [p.name for p in parent.iterdir()]) if parent else []
        hint = f" (did you mean {parent / near[0]}?)" if near else ""
        raise FileNotFoundError(
            f"{argument} {name}: no such folder{hint}. Build a dataset with scripts/build_dataset.py "
            f"(e.g. --source yolo:ROOT --output {name}); Hub datasets are named owner/name"
        )
    if not (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        raise ValueError(
            f"{argument} {name}: this folder is not a dataset built by scripts/build_dataset.py (it has no "
            f"state.json / dataset_dict.json). Build one from it first: {_build_hint(folder)}"
        )
    loaded = datasets.load_from_disk(str(folder))
    return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded


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
    """What was skipped, by reason, with the name of each skipped file or instance; warns the first few times for
    each reason."""

    counts: Counter = field(default_factory=Counter)
    names: dict[str, list[str]] = field(default_factory=dict)
    max_warnings: int = 5

    def skip(self, reason: str, name: str, detail: str = "") -> None:
        self.counts[reason] += 1
        self.names.setdefault(reason, []).append(name)
        if self.counts[reason] <= self.max_warnings:
            warnings.warn(f"skipped {name}: {reason}" + (f" ({detail})" if detail else ""), stacklevel=2)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, max_names: int = 20) -> str:
        """One line per reason: the count and the first `max_names` names."""
        lines = []
        for reason, count in self.counts.most_common():
            names = self.names[reason]
            more = f", ... ({len(names) - max_names} more)" if len(names) > max_names else ""
            lines.append(f"  {reason} ({count}): {', '.join(names[:max_names])}{more}")
        return "\n".join(lines)

    def listing(self) -> str:
        """Every name, one a line, under its reason."""
        return "".join(f"{reason}:\n" + "".join(f"  {n}\n" for n in self.names[reason]) for reason in self.names)


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
        skipped.skip("unreadable image", example.sample_id, str(error))
        return None
    masks, categories = [], []
    for index, mask in enumerate(example.masks):
        if mask.shape != (height, width):
            skipped.skip("mask size differs from the image", example.sample_id, f"{mask.shape} vs {(height, width)}")
            return None
        if not keep_empty and not mask.any():
            skipped.skip("empty mask", f"{example.sample_id} instance {index}")
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
    is skipped with a warning and counted in `skipped` (see `encode_example`). Raises ValueError, with the skip
    reasons, when no example gives a row."""
    import datasets

    skipped = skipped if skipped is not None else SkipCounter()
    written = 0

    def rows():
        nonlocal written
        for example in examples:
            row = encode_example(example, skipped, keep_empty)
            if row is not None:
                written += 1
                yield row

    try:
        # A fresh fingerprint: the examples are read once, never hashed (a generator cannot be).
        return datasets.Dataset.from_generator(
            rows, features=instance_features(), cache_dir=cache_dir, fingerprint=uuid.uuid4().hex
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # A reader's own error (a source that cannot be read) says more than the wrapper.
        if isinstance(error.__cause__, (ValueError, OSError)):
            raise error.__cause__ from None
        raise
    except ValueError as error:
        if written or "no data" not in str(error):  # datasets' 'Instruction "train" corresponds to no data!'
            raise
        reasons = skipped.summary(max_names=5) if skipped.total else "the sources gave no example"
        raise ValueError(f"no usable image: every example was skipped. Skipped:\n{reasons}") from None


# -- sources ----------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def read_yolo(
    root: Path, split: str = "train2017", prefix: str = "yolo", skipped: SkipCounter | None = None
) -> Iterator[InstanceExample]:
    """YOLO segmentation layout (coco128-seg): polygons normalised to [0, 1], rasterised with OpenCV. Images
    without a label file, label files without an image and polygons of fewer than 3 points are counted in
    `skipped` by name."""
    images, labels = root / "images" / split, root / "labels" / split
    if not images.is_dir():
        raise FileNotFoundError(f"{root} does not look like a YOLO segmentation set: missing images/{split}")
    return _yolo_examples(images, labels, prefix, skipped if skipped is not None else SkipCounter())


def _yolo_examples(images: Path, labels: Path, prefix: str, skipped: SkipCounter) -> Iterator[InstanceExample]:
    import cv2

    image_paths = _image_files(images)
    for image_path in image_paths:
        label_path = labels / f"{image_path.stem}.txt"
        if not label_path.is_file():
            skipped.skip("image without a label file", str(image_path.relative_to(images.parent.parent)))
            continue
        size = _image_size(image_path)
        if size is None:  # encode_example names it as an unreadable image
            yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, [])
            continue
        width, height = size
        masks, categories = [], []
        for number, line in enumerate(label_path.read_text().splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            if len(values) < 7:
                skipped.skip("polygon of fewer than 3 points", f"{label_path.name}:{number}")
                continue
            points = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * (width, height)
            mask = np.zeros((height, width), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
            masks.append(mask.astype(bool))
            categories.append(int(values[0]))
        yield InstanceExample(f"{prefix}/{image_path.stem}", image_path, masks, categories)
    stems = {p.stem for p in image_paths}
    for label_path in sorted(labels.glob("*.txt")) if labels.is_dir() else []:
        if label_path.stem not in stems:
            instances = sum(1 for line in label_path.read_text().splitlines() if line.split())
            name = label_path.relative_to(labels.parent.parent)
            skipped.skip("label file without an image", f"{name} ({instances} instances)")


def _mask_for(masks: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        found = find_by_stem(masks, stem + suffix)
        if found is not None:
            return found
    return None


def _paired_masks(
    images: Path, masks: Path, mask_suffixes: tuple[str, ...], skipped: SkipCounter
) -> Iterator[tuple[Path, Path]]:
    """(image, mask) pairs matched by stem; images without a mask and masks without an image are counted."""
    used = set()
    for image_path in _image_files(images):
        mask_path = _mask_for(masks, image_path.stem, mask_suffixes)
        if mask_path is None:
            skipped.skip("image without a mask file", f"{images.name}/{image_path.name}")
            continue
        used.add(mask_path)
        yield image_path, mask_path
    for mask_path in _image_files(masks):
        if mask_path not in used:
            skipped.skip("mask file without an image", f"{masks.name}/{mask_path.name}")


def looks_figure_ground(values: np.ndarray, path: Path) -> bool:
    """Whether a mask with these unique values is a figure-ground mask (0 / 255, or 0 / 128 / 255 with an
    uncertain band, or any JPEG: ids do not survive its compression) rather than instance ids."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return True
    present = set(values.tolist())
    return 255 in present and present <= {0, 128, 255}


def _read_ids(mask_path: Path) -> np.ndarray:
    ids = np.asarray(Image.open(mask_path))
    return ids[..., 0] if ids.ndim == 3 else ids


FIGURE_GROUND_CHECKED = 8  # masks read up front by read_id_folder


def read_id_folder(
    images: Path,
    masks: Path,
    prefix: str = "folder",
    mask_suffixes: tuple[str, ...] = ("", "_mask"),
    skipped: SkipCounter | None = None,
) -> Iterator[InstanceExample]:
    """Images with instance-id masks (0 background, 255 void, every other value an instance), matched by stem
    (`<stem>.png` or `<stem>_mask.png`, the Penn-Fudan naming). Figure-ground masks (`looks_figure_ground`)
    would read as void or as a 128-valued instance: the first masks are checked up front (ValueError naming
    `binary:`), any later one is skipped and counted."""
    skipped = skipped if skipped is not None else SkipCounter()
    for _, mask_path in itertools.islice(
        _paired_masks(images, masks, mask_suffixes, SkipCounter(max_warnings=0)), FIGURE_GROUND_CHECKED
    ):
        values = np.unique(_read_ids(mask_path))
        if looks_figure_ground(values, mask_path):
            raise ValueError(
                f"{mask_path} holds a figure-ground mask (values {values.tolist()[:6]}), not instance ids (0 "
                f"background, 1..N instances, 255 void): read such masks with binary:{images}:{masks} (or "
                f"binary-components: for one instance per connected part)"
            )
    return _id_examples(images, masks, prefix, mask_suffixes, skipped)


def _id_examples(
    images: Path, masks: Path, prefix: str, mask_suffixes: tuple[str, ...], skipped: SkipCounter
) -> Iterator[InstanceExample]:
    for image_path, mask_path in _paired_masks(images, masks, mask_suffixes, skipped):
        ids = _read_ids(mask_path)
        if looks_figure_ground(np.unique(ids), mask_path):
            skipped.skip("figure-ground mask in an instance-id folder (use binary:)", f"{masks.name}/{mask_path.name}")
            continue
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
    skipped: SkipCounter | None = None,
) -> Iterator[InstanceExample]:
    """Images with figure-ground masks (grey > 128 is the object; RGB masks are converted to grey first, masks
    of another size are resized to the image, nearest neighbour). With `components`, a mask of several
    separate objects (DUTS often puts several salient things in one mask) becomes one instance per connected
    component (`split_components`). Images without a mask and masks without an image are counted in
    `skipped`."""
    skipped = skipped if skipped is not None else SkipCounter()
    for image_path, mask_path in _paired_masks(images, masks, mask_suffixes, skipped):
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
