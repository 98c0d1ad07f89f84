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


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The Pascal VOC colour map, `(num_colors, 3)` uint8 (index 0 black, 1 red, 2 green, ...)."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, color = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                color[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = color
    return palette


def instance_color(instance: int) -> tuple[int, int, int]:
    """Colour of instance `k` (0-based): VOC palette entry k + 1, as the original demo."""
    return tuple(int(v) for v in voc_palette(256)[(instance % 255) + 1])


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer) or label_map.min(initial=0) < 0:
        raise ValueError(
            f"label_map must be a 2-D array of non-negative integers, got {label_map.dtype} {label_map.shape}"
        )
    return label_map


def save_label_map(label_map: np.ndarray, path: str | Path) -> Path:
    """Instance ids as a grayscale PNG (8-bit, or 16-bit beyond 255 instances)."""
    label_map = _check_label_map(label_map)
    array = label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)
    Image.fromarray(array).save(path)
    return Path(path)


def save_palette_label_map(label_map: np.ndarray, path: str | Path) -> Path:
    """Instance ids as a palette PNG in the VOC colours (readable ids, visible colours); up to 255 instances."""
    label_map = _check_label_map(label_map)
    if label_map.max(initial=0) > 255:
        raise ValueError(f"a palette PNG holds at most 255 instances, got {label_map.max()}")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(voc_palette(256).flatten().tolist())
    image.save(path)
    return Path(path)


def save_instance_masks(
    label_map: np.ndarray, directory: str | Path, prefix: str = "instance", num_instances: int | None = None
) -> list[Path]:
    """One 0/255 PNG per instance: `<prefix>_000.png` for instance 0, and so on (`num_instances` of them,
    default the largest id, so an instance whose mask came out empty still gets its file)."""
    label_map = _check_label_map(label_map)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance in range(int(label_map.max(initial=0)) if num_instances is None else num_instances):
        path = directory / f"{prefix}_{instance:03d}.png"
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


def to_coco(
    label_map: np.ndarray,
    file_name: str = "image.png",
    image_id: int = 1,
    segmentation: str = "rle",
    category_name: str = "object",
) -> dict[str, Any]:
    """A COCO-style dataset dict for one image: one annotation per instance.

    Args:
        segmentation: `"rle"` (exact) or `"polygon"` (outer contours).
    """
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    from pycocotools import mask as mask_utils

    label_map = _check_label_map(label_map)
    height, width = label_map.shape
    annotations = []
    for instance in range(int(label_map.max(initial=0))):
        mask = label_map == instance + 1
        if not mask.any():
            continue
        rle = mask_to_rle(mask)
        encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "instance": instance,
                "segmentation": rle if segmentation == "rle" else mask_to_polygons(mask),
                "area": float(mask_utils.area(encoded)),
                "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
                "iscrowd": 0,
            }
        )
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": height, "width": width}],
        "annotations": annotations,
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
) -> np.ndarray:
    """The image with instances blended in their colours and the clicks marked, `(H, W, 3)` uint8.

    Positive clicks are discs in their instance's colour with a white rim; background clicks are red discs with
    a black rim. `masks_only` draws the coloured label map alone (no photo). Click coordinates are read in the
    image's frame (`row, col`).
    """
    image = np.asarray(image)
    label_map = _check_label_map(label_map)
    if image.shape[:2] != label_map.shape:
        raise ValueError(f"image {image.shape[:2]} and label_map {label_map.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colors = voc_palette(256)
    colors = np.concatenate([colors[:1], colors[1:][np.arange(max(int(label_map.max(initial=0)), 1)) % 255]])
    colored = colors[label_map]
    if masks_only:
        blended = colored
    else:
        blended = image.astype(np.float32)
        foreground = label_map > 0
        blended[foreground] = (1 - alpha) * blended[foreground] + alpha * colored[foreground]
        blended = blended.round().astype(np.uint8)
    if not (show_clicks and clicks and click_radius > 0):
        return blended
    canvas = Image.fromarray(blended)
    draw = ImageDraw.Draw(canvas)
    for click in clicks:
        fill = (255, 0, 0) if click.instance is None else instance_color(click.instance)
        outline = (0, 0, 0) if click.instance is None else (255, 255, 255)
        r = click_radius
        draw.ellipse((click.col - r, click.row - r, click.col + r, click.row + r), fill=fill, outline=outline)
    return np.asarray(canvas)
