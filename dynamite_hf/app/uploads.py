"""Image files into the app: whatever a person uploads -> the `(H, W, 3)` uint8 RGB array the predictor takes,
with notes that say what was done to it and refusals worded for a person, naming the file.

The model's `load_image` takes uint8 images as they are; the app decodes uploads itself first, so that what a
photo library holds opens as people expect: 16-bit images are scaled (not clipped to white), transparent pixels
are laid over white (and the status line says so), and too-large or too-small images are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 2048  # uploads larger than this on their longest side are downscaled (with a note)
MIN_SIDE = 32  # uploads smaller than this on a side are refused: too small to click in the browser
MAX_MEGAPIXELS = 100  # larger files are refused before they are decoded (a 100-MP RGB image takes 300 MB)
# The overlay is drawn and sent with its longest side in this range: a 2-MP overlay took ~110 ms to draw and
# encode per click, and its transfer more, for a picture the browser shows at about 1000 px anyway. Small
# images are enlarged (nearest neighbour) so they can be clicked. Exports stay at the image's own size.
DISPLAY_SIDES = (512, 1024)
TRANSPARENT_BACKGROUND = (255, 255, 255)  # what transparent pixels are laid over


class UploadRefused(ValueError):
    """An upload the app cannot work on; the message is written for the person who uploaded it."""


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for the predictor.

    Attributes:
        pixels: `(H, W, 3)` uint8 RGB, EXIF orientation applied, at most `MAX_SIDE` on its longest side.
        notes: sentences for the status line saying what was changed (scaled, flattened, downscaled), or none.
    """

    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def decode_upload(path: str | Path, name: str | None = None) -> DecodedImage:
    """Decode the image file at `path`, which the person knows as `name` (default: the path's file name).

    Raises:
        UploadRefused: for a file that is empty, not an image, too large to open or too small to click, with a
            message that names `name` and says what to do.
    """
    path = Path(path)
    shown = repr(name or path.name)
    if not path.is_file() or path.stat().st_size == 0:
        raise UploadRefused(f"{shown} is empty or missing: nothing to open.")
    notes = []
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > MAX_MEGAPIXELS * 1_000_000:
                raise UploadRefused(_too_large(shown, width * height, f"{width}x{height} pixels, "))
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                notes.append(f"{shown} holds {frames} frames or pages: the first is used.")
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UploadRefused:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit (about 179 MP), checked while opening
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise UploadRefused(_too_large(shown, int(found.group(1)) if found else None)) from None
    except UnidentifiedImageError:
        raise UploadRefused(
            f"{shown} is not a readable image: upload a photo or picture file (JPEG, PNG, WebP, TIFF, BMP, GIF)."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadRefused(f"{shown} is not a readable image ({error}).") from None
    pixels, conversion_notes = _to_rgb(image, shown)
    notes += conversion_notes
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise UploadRefused(
            f"{shown} is {width}x{height} pixels: images need at least {MIN_SIDE} px on each side to be clicked."
        )
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        notes.append(f"Downscaled from {width}x{height} to {size[0]}x{size[1]} (the app works up to {MAX_SIDE} px).")
    return DecodedImage(np.ascontiguousarray(pixels), tuple(notes))


def _too_large(shown: str, pixels: int | None, dimensions: str = "") -> str:
    size = f"{dimensions}{pixels / 1e6:.0f} megapixels" if pixels else "far more pixels than that"
    return (
        f"{shown} is too large to open here ({size}; this app opens images up to {MAX_MEGAPIXELS} megapixels). "
        f"Save a smaller copy (the app works at up to {MAX_SIDE} px on the longest side anyway) and upload that."
    )


def _to_rgb(image: Image.Image, shown: str) -> tuple[np.ndarray, list[str]]:
    """`image` as `(H, W, 3)` uint8 RGB, and notes on what that changed."""
    notes = []
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.min() >= 0 and values.max() <= 65535):
            grey = values * (255 / 65535)  # the full 16-bit range onto 0-255, as viewers show it
            notes.append(f"{shown} is a 16-bit image: its values are scaled from 0-65535 to 0-255.")
        else:  # 32-bit integers or floats have no fixed range: stretch the image's own
            low, high = float(values.min()), float(values.max())
            grey = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
            notes.append(f"{shown} holds {image.mode}-mode values: its range {low:g}..{high:g} is stretched to 0-255.")
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), notes
    has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("RGB")), notes
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[:, :, 3:].astype(np.float32) / 255
    if alpha.min() == 1.0:  # an alpha channel that hides nothing
        return np.ascontiguousarray(rgba[:, :, :3]), notes
    background = np.array(TRANSPARENT_BACKGROUND, dtype=np.float32)
    flattened = rgba[:, :, :3] * alpha + background * (1 - alpha)
    share = float((alpha < 1).mean())
    notes.append(
        f"{shown} has transparent pixels ({100 * share:.0f} % of the image): they are shown and segmented as if "
        "laid over white."
    )
    return np.clip(np.rint(flattened), 0, 255).astype(np.uint8), notes


def display_size(height: int, width: int) -> tuple[int, int]:
    """`(height, width)` of the overlay for an image of `height x width`: longest side within `DISPLAY_SIDES`."""
    longest = max(height, width)
    scale = min(max(longest, DISPLAY_SIDES[0]), DISPLAY_SIDES[1]) / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def display_image(pixels: np.ndarray) -> np.ndarray:
    """`pixels` resized to `display_size`: enlarged by nearest neighbour (to click), reduced by area averaging."""
    height, width = display_size(*pixels.shape[:2])
    enlarge = height > pixels.shape[0]
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_NEAREST if enlarge else cv2.INTER_AREA)
