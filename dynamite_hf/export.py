"""Masks out: label-map PNGs, per-instance binary PNGs, COCO JSON (RLE or polygons), and the overlay renderer the
app uses. Label maps everywhere: `(H, W)` integers, 0 = background, k + 1 = instance k."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .clicks import Click

# Ten saturated, light colours, pairwise at least 94 apart in RGB, none close to the red of background clicks.
# Instance 1 is yellow: the VOC palette's dark red (128, 0, 0) vanished on red and brown objects. Beyond ten
# instances the colours repeat; the outlines still separate the masks.
INSTANCE_COLORS = np.array(
    [
        (255, 225, 25),
        (30, 144, 255),
        (255, 64, 200),
        (60, 220, 75),
        (255, 128, 0),
        (0, 230, 230),
        (170, 90, 255),
        (150, 200, 255),
        (200, 255, 120),
        (255, 180, 220),
    ],
    dtype=np.uint8,
)
RIM_COLOR = (255, 255, 255)  # on each mask's edge pixels
HALO_COLOR = (0, 0, 0)  # just outside each mask: white or black reads on any photo
BACKGROUND_CLICK_COLOR = (255, 0, 0)
MARKER_OUTER_RING = (0, 0, 0)  # click markers: black around white around the click's colour
MARKER_INNER_RING = (255, 255, 255)


def instance_color(instance: int) -> tuple[int, int, int]:
    """Colour of instance `k` (0-based) in the overlay and the palette PNG."""
    return tuple(int(v) for v in INSTANCE_COLORS[instance % len(INSTANCE_COLORS)])


def label_palette(num_colors: int = 256) -> np.ndarray:
    """`(num_colors, 3)` uint8 colours by label value: 0 (background) black, `k + 1` the colour of instance `k`."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    palette[1:] = INSTANCE_COLORS[np.arange(num_colors - 1) % len(INSTANCE_COLORS)]
    return palette


def empty_instances(label_map: np.ndarray, num_instances: int) -> list[int]:
    """The instances among `0..num_instances - 1` (0-based) that have no pixel in `label_map`: clicked, but
    every pixel went to another instance or the background."""
    label_map = _check_label_map(label_map)
    num_instances = _instance_count(label_map, num_instances)
    present = np.bincount(label_map.ravel(), minlength=num_instances + 1) > 0
    return [instance for instance in range(num_instances) if not present[instance + 1]]


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer) or label_map.min(initial=0) < 0:
        raise ValueError(
            f"label_map must be a 2-D array of non-negative integers, got {label_map.dtype} {label_map.shape}"
        )
    return label_map


def _instance_count(label_map: np.ndarray, num_instances: int | None) -> int:
    """`num_instances` checked against the ids in `label_map` (default: the largest id)."""
    largest = int(label_map.max(initial=0))
    if num_instances is None:
        return largest
    if not isinstance(num_instances, (int, np.integer)) or num_instances < largest:
        raise ValueError(
            f"num_instances must be at least {largest} (the largest id in label_map), got {num_instances!r}"
        )
    return int(num_instances)


def save_label_map(label_map: np.ndarray, path: str | Path) -> Path:
    """Instance ids as a grayscale PNG (8-bit, or 16-bit beyond 255 instances)."""
    label_map = _check_label_map(label_map)
    array = label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)
    Image.fromarray(array).save(path)
    return Path(path)


def save_palette_label_map(label_map: np.ndarray, path: str | Path) -> Path:
    """Instance ids as a palette PNG in the overlay's colours (readable ids, visible colours); up to 255 instances."""
    label_map = _check_label_map(label_map)
    if label_map.max(initial=0) > 255:
        raise ValueError(f"a palette PNG holds at most 255 instances, got {label_map.max()}")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(label_palette(256).flatten().tolist())
    image.save(path)
    return Path(path)


def save_instance_masks(
    label_map: np.ndarray,
    directory: str | Path,
    prefix: str = "instance",
    num_instances: int | None = None,
    first_number: int = 0,
) -> list[Path]:
    """One 0/255 PNG per instance: `<prefix>_000.png` for instance 0, and so on.

    Args:
        num_instances: how many instances were clicked (default: the largest id in `label_map`). Every one gets
            its file, an all-zero one when its mask came out empty.
        first_number: the number in the first instance's file name; 1 names each file by its label-map value
            (`instance_001.png` for the pixels of value 1), as the app numbers instances on screen.
    """
    label_map = _check_label_map(label_map)
    num_instances = _instance_count(label_map, num_instances)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance in range(num_instances):
        path = directory / f"{prefix}_{instance + first_number:03d}.png"
        Image.fromarray(((label_map == instance + 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE (`{"size": [H, W], "counts": str}`) of a binary mask, by pycocotools."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (`[x1, y1, x2, y2, ...]`, pixel coordinates), by OpenCV.

    The vertices are the centres of the boundary pixels, so a polygon rasterised back loses about half a pixel
    around the object (use RLE for exact masks). Polygons with fewer than 3 points are dropped; `tolerance` > 0
    simplifies them (Douglas-Peucker, in pixels).
    """
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        if len(contour) >= 3:
            polygons.append([float(v) for v in contour.reshape(-1)])
    return polygons


def coco_annotations(
    label_map: np.ndarray,
    image_id: int,
    first_id: int = 1,
    segmentation: str = "rle",
    num_instances: int | None = None,
    category_ids: Sequence[int] | None = None,
    first_instance_number: int = 0,
) -> list[dict[str, Any]]:
    """COCO annotations of one image's instances, with ids `first_id, first_id + 1, ...`.

    Args:
        segmentation: `"rle"` (exact) or `"polygon"` (outer contours).
        num_instances: how many instances were clicked (default: the largest id in `label_map`). Every one gets
            an annotation; an empty mask gives area 0, bbox `[0, 0, 0, 0]` and an empty segmentation.
        category_ids: each instance's category id (default: 1 for all).
        first_instance_number: the `"instance"` number of the first instance (1: its label-map value).
    """
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    from pycocotools import mask as mask_utils

    label_map = _check_label_map(label_map)
    num_instances = _instance_count(label_map, num_instances)
    if category_ids is not None and len(category_ids) != num_instances:
        raise ValueError(f"category_ids must give one id per instance ({num_instances}), got {len(category_ids)}")
    annotations = []
    for instance in range(num_instances):
        mask = label_map == instance + 1
        rle = mask_to_rle(mask)
        encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        annotations.append(
            {
                "id": first_id + instance,
                "image_id": image_id,
                "category_id": 1 if category_ids is None else int(category_ids[instance]),
                "instance": instance + first_instance_number,
                "segmentation": rle if segmentation == "rle" else mask_to_polygons(mask),
                "area": float(mask_utils.area(encoded)),
                "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
                "iscrowd": 0,
            }
        )
    return annotations


def to_coco(
    label_map: np.ndarray,
    file_name: str = "image.png",
    image_id: int = 1,
    segmentation: str = "rle",
    category_name: str = "object",
    num_instances: int | None = None,
) -> dict[str, Any]:
    """A COCO-style dataset dict for one image: one annotation per instance (`coco_annotations`), one category.

    Args:
        segmentation: `"rle"` (exact) or `"polygon"` (outer contours).
        num_instances: how many instances were clicked (default: the largest id in `label_map`). Every one gets
            an annotation; an empty mask gives area 0, bbox `[0, 0, 0, 0]` and an empty segmentation.
    """
    label_map = _check_label_map(label_map)
    height, width = label_map.shape
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": height, "width": width}],
        "annotations": coco_annotations(label_map, image_id, segmentation=segmentation, num_instances=num_instances),
        "categories": [{"id": 1, "name": category_name}],
    }


def save_coco(label_map: np.ndarray, path: str | Path, **kwargs: Any) -> Path:
    """`to_coco` written as JSON."""
    Path(path).write_text(json.dumps(to_coco(label_map, **kwargs)))
    return Path(path)


def render_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    clicks: Sequence[Click] = (),
    alpha: float = 0.5,
    click_radius: int = 3,
    show_clicks: bool = True,
    masks_only: bool = False,
    selected: int | None = None,
) -> np.ndarray:
    """The image with instances blended in their colours, outlined, and the clicks marked, `(H, W, 3)` uint8.

    Every mask gets a white rim on its edge pixels and a black line just outside, so its outline reads on any
    photo; the `selected` instance (0-based) gets a 2 px rim. Clicks are discs of radius `click_radius` in their
    instance's colour (background clicks red) inside a white ring inside a black ring, each 1 px, so that a
    marker stands out on any photo and any mask colour. `masks_only` draws the coloured
    label map alone (no photo). Click coordinates are read in the image's frame (`row, col`).
    """
    import cv2

    image = np.asarray(image)
    label_map = _check_label_map(label_map)
    if image.shape[:2] != label_map.shape:
        raise ValueError(f"image {image.shape[:2]} and label_map {label_map.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    num_labels = int(label_map.max(initial=0)) + 1
    if num_labels <= 256:  # OpenCV's lookup table and blend: ~10x faster than numpy's fancy and masked indexing
        labels = label_map.astype(np.uint8)
        colored = cv2.LUT(cv2.merge([labels, labels, labels]), label_palette(256)[None])
    else:
        colored = label_palette(num_labels)[label_map]
    foreground = label_map > 0
    if masks_only:
        blended = colored
    else:
        mixed = cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1 - alpha, colored, alpha, 0)
        blended = cv2.copyTo(mixed, foreground.view(np.uint8), image.copy())
    # Outlines: 4-neighbours with another label; cv2's morphology wants uint8/uint16 labels.
    labels = np.minimum(label_map, np.iinfo(np.uint16).max).astype(np.uint16)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    grown = cv2.dilate(labels, cross)
    rim = foreground & ((grown != labels) | (cv2.erode(labels, cross) != labels))
    if selected is not None:
        chosen = (labels == selected + 1).astype(np.uint8)
        rim |= (chosen > 0) & (cv2.erode(chosen, cross, iterations=2) == 0)
    blended[~foreground & (grown > 0)] = HALO_COLOR
    blended[rim] = RIM_COLOR
    if not (show_clicks and clicks and click_radius > 0):
        return blended
    canvas = Image.fromarray(blended)
    draw = ImageDraw.Draw(canvas)
    for click in clicks:
        fill = BACKGROUND_CLICK_COLOR if click.instance is None else instance_color(click.instance)
        # A black ring around a white one around the fill: one of the two rings stands out on any photo and on
        # any mask colour, the instance's own included.
        for extra, color in ((2, MARKER_OUTER_RING), (1, MARKER_INNER_RING), (0, fill)):
            r = click_radius + extra
            draw.ellipse((click.col - r, click.row - r, click.col + r, click.row + r), fill=color)
    return np.asarray(canvas)
