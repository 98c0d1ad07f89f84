"""Readers for the benchmark layouts users have on disk, each yielding `EvaluationSample`s (the evaluation's
item; `dynamite_hf.data.instances` turns them into rows of the training schema, never the other way round).

| name | layout under the root | objects | ignore |
|---|---|---|---|
| `grabcut` | `data_GT/<id>.*` images, `boundary_GT/<id>.bmp` | value > 128 | value == 128 |
| `berkeley` | `images/*.jpg`, `masks/*.png` | value > 128 | value == 128 |
| `coco_mval` | `img/*.jpg`, `gt/*.png` | value > 128 | - |
| `davis` | `img/NNN.jpg`, `gt/NNN.png` (palette ids) | single: any id not 0/255; multi: ids 1.. | 255 |
| `folder` | `images/<stem>.*`, `masks/<stem>.png` (instance ids) | single: one sample per id; multi: all ids | 255 |
| `sbd` | `img/*.jpg`, `inst/*.mat` (`GTinst.Segmentation`), `val.txt` | instance ids | - |
| `pascal_voc` | `JPEGImages/`, `SegmentationObject/*.png`, `ImageSets/Segmentation/val.txt` | palette ids | 255 (void) |
| `coco` | `annotations/instances_<split>.json` (COCO or LVIS), images in `<split>/` | non-crowd instances | - |

Single-instance sets give one sample per object; multi-instance mode gives one sample per image with every
object. Objects are made non-overlapping as the original does (stable sort by area, largest first, smaller
objects painted on top).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class EvaluationSample:
    """One evaluation item.

    Attributes:
        sample_id: a stable name (`<image stem>` or `<image stem>_<object>`).
        image_path: the image file.
        instance_map: `(H, W)` int32, 0 background, k + 1 = object k, non-overlapping.
        ignore: `(H, W)` bool of pixels left out of the protocol, or None.
        object_count: the number of objects when some may be empty (fully covered by smaller ones, which the
            original keeps); by default the largest id in `instance_map`.
    """

    sample_id: str
    image_path: Path
    instance_map: np.ndarray
    ignore: np.ndarray | None = None
    object_count: int | None = None

    @property
    def num_objects(self) -> int:
        return int(self.instance_map.max()) if self.object_count is None else self.object_count

    @property
    def ignore_masks(self) -> np.ndarray | None:
        """Per-object ignore masks `(N, H, W)` as the clicker takes them (the same mask for every object)."""
        if self.ignore is None:
            return None
        return np.repeat(self.ignore[None], max(self.num_objects, 1), axis=0)


def area_order(masks: list[np.ndarray]) -> list[int]:
    """Mask indices by area, largest first; a stable sort, so equal areas keep their annotation order."""
    return sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))


def paint_instances(masks: list[np.ndarray]) -> np.ndarray:
    """Non-overlapping instance map from possibly overlapping masks, as the original evaluator builds it: the
    masks sorted by area (`area_order`), **numbered in that order** (object 0 = the largest, map value 1,
    whatever the annotation order) and painted largest first, so smaller objects end up on top; an object fully
    covered by smaller ones becomes empty and is kept. The numbering decides the initial clicks' order and
    timestamps, the query order and every multi-instance strategy's choices."""
    shape = masks[0].shape if masks else (0, 0)
    instance_map = np.zeros(shape, dtype=np.int32)
    for number, index in enumerate(area_order(masks)):
        instance_map[masks[index]] = number + 1
    return instance_map


def _read_gray(path: Path) -> np.ndarray:
    """Grey values (a palette image is converted to its grey values, not read as indices)."""
    with Image.open(path) as image:
        return np.asarray(image if image.mode == "L" else image.convert("L"))


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The first image file `<stem>.<image suffix>` in `folder`, or None."""
    for candidate in sorted(folder.glob(f"{stem}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            return candidate
    return None


def _find_image(folder: Path, stem: str) -> Path:
    found = find_by_stem(folder, stem)
    if found is None:
        raise FileNotFoundError(f"no image for {stem!r} in {folder}")
    return found


def _binary_samples(images: Path, masks: list[Path], with_ignore: bool) -> Iterator[EvaluationSample]:
    for mask_path in masks:
        values = _read_gray(mask_path)
        ignore = (values == 128) if with_ignore else None
        yield EvaluationSample(
            mask_path.stem, _find_image(images, mask_path.stem), (values > 128).astype(np.int32), ignore
        )


def _id_samples(images: Path, masks: list[Path], multi: bool, ignore_value: int = 255) -> Iterator[EvaluationSample]:
    for mask_path in masks:
        ids = np.asarray(Image.open(mask_path)).astype(np.int64)
        if ids.ndim == 3:
            raise ValueError(f"{mask_path} must be an instance-id (grayscale or palette) PNG, got a colour image")
        ignore = ids == ignore_value
        ignore = ignore if ignore.any() else None
        image_path = _find_image(images, mask_path.stem)
        objects = [int(v) for v in np.unique(ids) if v not in (0, ignore_value)]
        if multi:
            if objects:
                instance_map = paint_instances([ids == v for v in objects])
                yield EvaluationSample(mask_path.stem, image_path, instance_map, ignore, len(objects))
        else:
            for value in objects:
                yield EvaluationSample(f"{mask_path.stem}_{value}", image_path, (ids == value).astype(np.int32), ignore)


def _require(root: Path, *folders: str) -> None:
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} does not look like this dataset: missing folder(s) {missing}")


def iter_dataset(name: str, root: str | Path, mode: str = "single") -> Iterator[EvaluationSample]:
    """The samples of dataset `name` (see the module docstring) under `root`, in file-name order, read one at a
    time (a process of a sharded evaluation keeps only its share in memory). The arguments are checked here, before
    the first sample is read."""
    root = Path(root)
    if mode not in ("single", "multi"):
        raise ValueError(f"mode must be 'single' or 'multi', got {mode!r}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    return DATASETS[name](root, mode)


def read_dataset(name: str, root: str | Path, mode: str = "single") -> list[EvaluationSample]:
    """All samples of dataset `name` (see the module docstring) under `root`, in file-name order."""
    return list(iter_dataset(name, root, mode))


def _grabcut(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "data_GT", "boundary_GT")
    return _binary_samples(root / "data_GT", sorted((root / "boundary_GT").glob("*.bmp")), with_ignore=True)


def _berkeley(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "images", "masks")
    return _binary_samples(root / "images", sorted((root / "masks").glob("*.png")), with_ignore=True)


def _coco_mval(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "img", "gt")
    return _binary_samples(root / "img", sorted((root / "gt").glob("*.png")), with_ignore=False)


def _davis(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "img", "gt")
    masks = sorted((root / "gt").glob("*.png"))
    if mode == "multi":
        return _id_samples(root / "img", masks, multi=True)

    def single() -> Iterator[EvaluationSample]:  # the 345-frame protocol: every object together is the object
        for mask_path in masks:
            ids = np.asarray(Image.open(mask_path))
            ignore = ids == 255
            yield EvaluationSample(
                mask_path.stem,
                _find_image(root / "img", mask_path.stem),
                ((ids != 0) & ~ignore).astype(np.int32),
                ignore if ignore.any() else None,
            )

    return single()


def _folder(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "images", "masks")
    return _id_samples(root / "images", sorted((root / "masks").glob("*.png")), multi=mode == "multi")


def _split_samples(
    sample_id: str, image_path: Path, masks: list[np.ndarray], mode: str, ignore: np.ndarray | None = None
) -> Iterator[EvaluationSample]:
    if mode == "multi":
        if masks:
            yield EvaluationSample(sample_id, image_path, paint_instances(masks), ignore, len(masks))
        return
    for index, mask in enumerate(masks):
        yield EvaluationSample(f"{sample_id}_{index}", image_path, mask.astype(np.int32), ignore)


def _ids_from_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _sbd(root: Path, mode: str) -> Iterator[EvaluationSample]:
    from scipy.io import loadmat

    _require(root, "img", "inst")
    if not (root / "val.txt").is_file():
        raise FileNotFoundError(f"{root} does not look like SBD: missing val.txt")
    for stem in _ids_from_list(root / "val.txt"):
        segmentation = loadmat(root / "inst" / f"{stem}.mat")["GTinst"]["Segmentation"][0][0]
        ids = [int(v) for v in np.unique(segmentation) if v != 0]
        yield from _split_samples(stem, root / "img" / f"{stem}.jpg", [segmentation == v for v in ids], mode)


def _pascal_voc(root: Path, mode: str) -> Iterator[EvaluationSample]:
    _require(root, "JPEGImages", "SegmentationObject")
    listing = root / "ImageSets" / "Segmentation" / "val.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{root} does not look like Pascal VOC: missing {listing.relative_to(root)}")
    for stem in _ids_from_list(listing):
        ids = np.asarray(Image.open(root / "SegmentationObject" / f"{stem}.png"))
        void = ids == 255
        masks = [ids == v for v in np.unique(ids) if v not in (0, 255)]
        yield from _split_samples(stem, root / "JPEGImages" / f"{stem}.jpg", masks, mode, void if void.any() else None)


def _coco(root: Path, mode: str) -> Iterator[EvaluationSample]:
    from pycocotools.coco import COCO

    files = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    if not files:
        raise FileNotFoundError(f"{root} does not look like COCO/LVIS: no annotations/*.json")
    annotations = files[0]
    split = annotations.stem.split("_", 1)[-1]
    images = root / split if (root / split).is_dir() else root / "images"
    coco = COCO(str(annotations))
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        file_name = info.get("file_name") or Path(info["coco_url"]).name  # LVIS stores a URL instead
        yield from _split_samples(str(image_id), images / file_name, masks, mode)


DATASETS = {
    "grabcut": _grabcut,
    "berkeley": _berkeley,
    "coco_mval": _coco_mval,
    "davis": _davis,
    "folder": _folder,
    "sbd": _sbd,
    "pascal_voc": _pascal_voc,
    "coco": _coco,
}
