"""Generated training images where saliency is the wrong answer: only the click can say which object is meant.

- `textured_shapes`: 2-5 shapes cut from one shared texture on a background of another texture. Every shape
  looks alike, so a model that ignores where it was clicked cannot pick the right one. The diagnostic problem of
  `scripts/benchmark_click_learning.py` and of the click-learning test.
- `copy_paste_composites`: objects cut out of an instance dataset (their own pixels and masks) pasted onto
  other photos, each its own instance, later ones occluding earlier ones. The photo's own salient content is
  background, and several pasted objects compete for one click.
- `photo_regions`: regions of any photo as targets (in the spirit of MIS, ICCV 2023: targets at many
  granularities that saliency cannot guess): the photo's colours are clustered into 3-10 groups (colour and
  position), and connected parts of one group (grass, a wall, a shirt, part of the sky) are the instances. The
  granularity changes from image to image, so only the clicks can say how much is meant.

All yield `InstanceExample`s with the image encoded in memory (PNG for shapes, JPEG for photos), so they go
through `build_dataset` like any reader (`scripts/build_dataset.py --source synthetic:...` / `composite:...`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .instances import InstanceExample, decode_rle

# ---------------------------------------------------------------------------------------------------------
# textures and shapes


def random_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A `(height, width, 3)` uint8 texture: two random colours mixed by a random pattern (stripes at any angle,
    checks, blobs or rings), plus fine noise."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(4)
    period = rng.uniform(6, 28)
    angle = rng.uniform(0, np.pi)
    along = rows * np.sin(angle) + cols * np.cos(angle)
    if kind == 0:  # stripes
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * along / period)
    elif kind == 1:  # checks
        across = -rows * np.cos(angle) + cols * np.sin(angle)
        pattern = ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float32)
    elif kind == 2:  # smooth blobs
        coarse = rng.random((max(height // int(period), 2), max(width // int(period), 2))).astype(np.float32)
        pattern = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    else:  # rings around a random centre
        centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
        radius = np.hypot(rows - centre_row, cols - centre_col)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * radius / period)
    pattern = np.clip(pattern, 0, 1)[..., None]
    first, second = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    texture = first * pattern + second * (1 - pattern) + rng.normal(0, 6, (height, width, 1))
    return np.clip(texture, 0, 255).astype(np.uint8)


def random_shape(height: int, width: int, rng: np.random.Generator, min_side: float, max_side: float) -> np.ndarray:
    """A `(height, width)` bool mask of one ellipse, rectangle, star-like polygon or blob, at a random place,
    with a bounding side between `min_side` and `max_side` pixels."""
    mask = np.zeros((height, width), dtype=np.uint8)
    side = rng.uniform(min_side, max_side)
    centre = (int(rng.uniform(side / 2, width - side / 2)), int(rng.uniform(side / 2, height - side / 2)))
    kind = rng.integers(4)
    if kind == 0:
        axes = (int(side / 2), int(side / 2 * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        half = np.array([side / 2, side / 2 * rng.uniform(0.3, 1.0)])
        box = cv2.boxPoints((centre, tuple(2 * half), float(rng.uniform(0, 180))))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    else:
        count = int(rng.integers(5, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        inner = 0.35 if kind == 2 else 0.75
        radii = side / 2 * rng.uniform(inner, 1.0, count)
        points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def textured_shapes_image(
    rng: np.random.Generator, size: int = 256, min_shapes: int = 2, max_shapes: int = 5
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image: `(size, size, 3)` uint8 and 2-5 non-touching shape masks of one shared texture on a
    background of another. Shapes are kept at least 3 px apart, so every shape has a visible outline."""
    background = random_texture(size, size, rng)
    foreground = random_texture(size, size, rng)
    count = int(rng.integers(min_shapes, max_shapes + 1))
    taken = np.zeros((size, size), dtype=bool)
    masks: list[np.ndarray] = []
    for _ in range(count * 20):
        if len(masks) == count:
            break
        mask = random_shape(size, size, rng, size * 0.15, size * 0.45)
        if mask.sum() < 0.003 * size * size or (mask & taken).any():
            continue
        masks.append(mask)
        taken |= cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    image = background.copy()
    for mask in masks:
        image[mask] = foreground[mask]
    return image, masks


def textured_parts_image(
    rng: np.random.Generator, size: int = 256, min_objects: int = 2, max_objects: int = 4, max_parts: int = 3
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image of 2-4 objects, each made of 1-3 touching parts; every part takes one of 2-3 textures shared by
    all objects, the background another. A click on one part cannot tell which neighbouring parts belong to the
    same object (they look like the parts of the other objects), so the first mask is often part of the object
    and a corrective click must add or remove the rest: the targets that teach corrective clicks."""
    background = random_texture(size, size, rng)
    textures = [random_texture(size, size, rng) for _ in range(int(rng.integers(2, 4)))]
    count = int(rng.integers(min_objects, max_objects + 1))
    taken = np.zeros((size, size), dtype=bool)
    image = background.copy()
    masks: list[np.ndarray] = []
    for _ in range(count * 20):
        if len(masks) == count:
            break
        first = random_shape(size, size, rng, size * 0.12, size * 0.3)
        if first.sum() < 0.003 * size * size or (first & taken).any():
            continue
        parts = [first]
        for _ in range(int(rng.integers(0, max_parts))):
            # A part centred on the object's border, so that it touches (and may overlap) what is there.
            rows, cols = np.nonzero(cv2.dilate(parts[-1].astype(np.uint8), np.ones((3, 3), np.uint8)) > parts[-1])
            pick = int(rng.integers(len(rows)))
            part = np.zeros((size, size), dtype=np.uint8)
            radius = int(rng.uniform(size * 0.05, size * 0.12))
            axes = (radius, int(radius * rng.uniform(0.5, 1.0)))
            cv2.ellipse(part, (int(cols[pick]), int(rows[pick])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            part = part.astype(bool)
            union = np.logical_or.reduce(parts)
            if (part & ~union & taken).any():
                continue
            parts.append(part & ~union)
        whole = np.logical_or.reduce(parts)
        for part in parts:
            texture = textures[int(rng.integers(len(textures)))]
            image[part] = texture[part]
        masks.append(whole)
        taken |= cv2.dilate(whole.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return image, masks


SYNTHETIC_KINDS = {"shapes": textured_shapes_image, "parts": textured_parts_image}


def textured_shapes(
    count: int, seed: int = 0, size: int = 256, prefix: str = "shapes", kind: str = "shapes"
) -> Iterator[InstanceExample]:
    """`count` generated images of `kind` (`shapes`: `textured_shapes_image`; `parts`: `textured_parts_image`),
    image `i` drawn from `default_rng([seed, i])`."""
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"kind must be one of {sorted(SYNTHETIC_KINDS)}, got {kind!r}")
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        image, masks = SYNTHETIC_KINDS[kind](rng, size)
        yield InstanceExample(f"{prefix}/{kind}_{seed}_{index:06d}", f"{index:06d}.png", masks, image_bytes=_png(image))


# ---------------------------------------------------------------------------------------------------------
# copy-paste composites


def _decode_row(row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    with Image.open(io.BytesIO(row["image"]["bytes"])) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels, [decode_rle(rle) for rle in row["masks"]]


def _cut_out(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return image[top:bottom, left:right], mask[top:bottom, left:right]


def composite_image(
    background: np.ndarray,
    objects: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    max_side: int = 512,
    min_visible: float = 0.4,
    min_pixels: int = 400,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paste `objects` (each an RGB crop and its bool mask) onto `background` (resized so its longer side is
    `max_side`), each scaled so its longer side is 15-60 % of the background's shorter side, placed at random
    (partly outside is allowed), later objects in front. Returns the image and the visible mask of each object
    that keeps at least `min_visible` of its pasted area and `min_pixels` pixels."""
    scale = max_side / max(background.shape[:2])
    height, width = (max(int(round(s * scale)), 1) for s in background.shape[:2])
    image = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    pasted: list[np.ndarray] = []
    pasted_areas: list[int] = []
    for crop, crop_mask in objects:
        target = rng.uniform(0.15, 0.6) * min(height, width)
        factor = target / max(crop_mask.shape)
        new_h, new_w = max(int(round(crop_mask.shape[0] * factor)), 1), max(int(round(crop_mask.shape[1] * factor)), 1)
        crop = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        crop_mask = cv2.resize(crop_mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST) > 0
        # The top-left corner may put up to a quarter of the object outside the image.
        top = int(rng.integers(-new_h // 4, max(height - 3 * new_h // 4, -new_h // 4 + 1)))
        left = int(rng.integers(-new_w // 4, max(width - 3 * new_w // 4, -new_w // 4 + 1)))
        full = np.zeros((height, width), dtype=bool)
        source_top, source_left = max(-top, 0), max(-left, 0)
        dest_top, dest_left = max(top, 0), max(left, 0)
        span_h = min(new_h - source_top, height - dest_top)
        span_w = min(new_w - source_left, width - dest_left)
        if span_h <= 0 or span_w <= 0:
            continue
        window = crop_mask[source_top : source_top + span_h, source_left : source_left + span_w]
        full[dest_top : dest_top + span_h, dest_left : dest_left + span_w] = window
        pixels = crop[source_top : source_top + span_h, source_left : source_left + span_w]
        region = image[dest_top : dest_top + span_h, dest_left : dest_left + span_w]
        region[window] = pixels[window]
        for earlier in pasted:
            earlier &= ~full
        pasted.append(full)
        pasted_areas.append(int(full.sum()))
    # A mostly hidden object (a sliver behind others) is no target a person would click.
    kept = [m for m, area in zip(pasted, pasted_areas) if m.sum() >= max(min_pixels, min_visible * area)]
    return image, kept


def copy_paste_composites(
    objects_dataset,
    backgrounds_dataset,
    count: int,
    seed: int = 0,
    min_objects: int = 2,
    max_objects: int = 5,
    min_object_pixels: int = 2500,
    prefix: str = "composite",
) -> Iterator[InstanceExample]:
    """`count` composites: objects cut from random instances of `objects_dataset` (rows of the instance schema,
    instances of at least `min_object_pixels`) pasted onto random photos of `backgrounds_dataset`. Composite
    `i` draws from `default_rng([seed, i])`; it is left out when fewer than 2 objects stay visible."""
    import datasets

    if len(objects_dataset) == 0 or len(backgrounds_dataset) == 0:
        raise ValueError("copy_paste_composites needs non-empty objects and backgrounds datasets")
    # Decoded here from the embedded bytes (the datasets' Image feature would decode every row to PIL first).
    objects_dataset = objects_dataset.cast_column("image", datasets.Image(decode=False))
    backgrounds_dataset = backgrounds_dataset.cast_column("image", datasets.Image(decode=False))
    areas = objects_dataset["areas"]
    candidates = [
        (r, i) for r, row_areas in enumerate(areas) for i, a in enumerate(row_areas) if a >= min_object_pixels
    ]
    if not candidates:
        raise ValueError(f"no instance of at least {min_object_pixels} pixels in the objects dataset")
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        background, _ = _decode_row(backgrounds_dataset[int(rng.integers(len(backgrounds_dataset)))])
        objects = []
        for _ in range(int(rng.integers(min_objects, max_objects + 1))):
            row_index, instance = candidates[int(rng.integers(len(candidates)))]
            pixels, masks = _decode_row(objects_dataset[row_index])
            objects.append(_cut_out(pixels, masks[instance]))
        image, masks = composite_image(background, objects, rng)
        if len(masks) < min_objects:
            continue
        yield InstanceExample(f"{prefix}/{seed}_{index:06d}", f"{index:06d}.jpg", masks, image_bytes=_jpeg(image))


REGION_KINDS = ("free", "background")


def color_regions(
    image: np.ndarray,
    rng: np.random.Generator,
    max_regions: int = 4,
    min_fraction: float = 0.01,
    max_fraction: float = 0.5,
    outside: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Up to `max_regions` disjoint regions of `image` (RGB uint8): the pixels are clustered by Lab colour and
    position into 3-10 groups (k-means on a sample, the clusters' count and the position's weight drawn from
    `rng`), lightly smoothed, and connected parts of one cluster covering `min_fraction`-`max_fraction` of the
    image are candidates; a random subset of them is returned as bool masks (largest first). With `outside`
    (a bool mask), regions are taken only from the pixels outside it."""
    height, width = image.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    spatial = rng.uniform(20.0, 80.0) / max(height, width)  # Lab units per pixel of distance
    features = np.concatenate([lab, (rows * spatial)[..., None], (cols * spatial)[..., None]], -1).reshape(-1, 5)
    clusters = int(rng.integers(3, 11))
    sample = features[rng.choice(len(features), size=min(len(features), 4096), replace=False)]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    _, _, centres = cv2.kmeans(sample, clusters, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    distances = ((features[:, None, :] - centres[None]) ** 2).sum(-1)
    labels = distances.argmin(1).reshape(height, width).astype(np.uint8)
    labels = cv2.medianBlur(labels, 5)  # drops specks and ragged edges
    allowed = np.ones((height, width), dtype=bool) if outside is None else ~outside
    candidates = []
    for cluster in range(clusters):
        members = ((labels == cluster) & allowed).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(members, 8)
        for component in range(1, count):
            fraction = stats[component, cv2.CC_STAT_AREA] / (height * width)
            if min_fraction <= fraction <= max_fraction:
                candidates.append(components == component)
    if not candidates:
        return []
    chosen = rng.choice(
        len(candidates), size=min(len(candidates), int(rng.integers(1, max_regions + 1))), replace=False
    )
    return sorted((candidates[i] for i in chosen), key=lambda mask: -int(mask.sum()))


def photo_regions(
    photos_dataset,
    count: int,
    seed: int = 0,
    max_side: int = 512,
    prefix: str = "regions",
    kind: str = "free",
) -> Iterator[InstanceExample]:
    """`count` examples: random photos of `photos_dataset` (rows of the instance schema) scaled so the longer side
    is at most `max_side`, with `color_regions` as instances. `kind`:

    - `free`: regions anywhere, the photo's own masks unused (a region may be part of an object);
    - `background`: the photo's own objects whole, and regions only outside them (a 5 px band around the
      objects left out), so a click on an object still means the whole object and a click beside it a region
      of the background that saliency cannot guess.

    Example `i` draws from `default_rng([seed, i])`; it is left out when the photo gives no region."""
    import datasets

    if kind not in REGION_KINDS:
        raise ValueError(f"photo_regions: kind must be one of {REGION_KINDS}, got {kind!r}")
    if len(photos_dataset) == 0:
        raise ValueError("photo_regions needs a non-empty photos dataset")
    photos_dataset = photos_dataset.cast_column("image", datasets.Image(decode=False))
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        photo, objects = _decode_row(photos_dataset[int(rng.integers(len(photos_dataset)))])
        scale = max_side / max(photo.shape[:2])
        if scale < 1:
            size = (max(int(round(photo.shape[1] * scale)), 1), max(int(round(photo.shape[0] * scale)), 1))
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
            objects = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in objects]
        if kind == "free":
            masks = color_regions(photo, rng)
        else:
            objects = [m for m in objects if m.any()]
            taken = np.zeros(photo.shape[:2], dtype=np.uint8)
            for mask in objects:
                taken |= mask
            band = cv2.dilate(taken, np.ones((11, 11), np.uint8)) > 0
            regions = color_regions(photo, rng, outside=band)
            masks = objects + regions if regions else []
        if masks:
            yield InstanceExample(f"{prefix}/{seed}_{index:06d}", f"{index:06d}.jpg", masks, image_bytes=_jpeg(photo))


def save_instance_folder(examples: Iterable[InstanceExample], root: Path | str) -> Path:
    """Write examples in the `folder` evaluation layout (`images/<stem>.png`, `masks/<stem>.png` with instance
    ids 1..N, smaller objects painted last), so that `read_dataset("folder", root)` reads them back."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for example in examples:
        stem = example.sample_id.replace("/", "_")
        with Image.open(io.BytesIO(example.image_bytes)) as image:
            image.convert("RGB").save(root / "images" / f"{stem}.png")
        ids = np.zeros(example.masks[0].shape, dtype=np.uint8)
        for index in sorted(range(len(example.masks)), key=lambda i: -example.masks[i].sum()):
            ids[example.masks[index]] = index + 1
        Image.fromarray(ids).save(root / "masks" / f"{stem}.png")
    return root
