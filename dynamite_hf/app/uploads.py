"""Image files into the app: whatever a person uploads -> the `(H, W, 3)` uint8 RGB array the predictor takes,
with notes that say what was done to it and refusals worded for a person, naming the file.

The model's `load_image` takes uint8 images as they are; the app decodes uploads itself first, so that what a
photo library holds opens as people expect: 16-bit images are scaled (not clipped to white), transparent pixels
are laid over white (and the status line says so), and too-large or too-small images are refused by name.

A file is refused from its header, before any pixel is decoded, when it declares more than the app's megapixels
(`--max-megapixels`; `limit_decoder_pixels` gives Pillow the same limit for whatever else decodes images). An image
larger than the app's working size is decoded small: a JPEG by its decoder at 1/2 to 1/8 scale, any other format
reduced to the working size before it is converted, so a small file that declares many pixels (a decompression
bomb within the limit, a 16-bit scan) costs its decoded size once, not several float copies of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .limits import AppLimits

MAX_SIDE = 2048  # uploads larger than this on their longest side are downscaled (with a note)
MIN_SIDE = 32  # uploads smaller than this on a side are refused: too small to click in the browser
MAX_MEGAPIXELS = AppLimits().max_megapixels  # larger files are refused before they are decoded
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
        original_size: `(height, width)` of the image in the file, EXIF orientation applied (`pixels` may be
            smaller).
    """

    pixels: np.ndarray
    notes: tuple[str, ...] = ()
    original_size: tuple[int, int] | None = None


def limit_decoder_pixels(max_megapixels: int) -> None:
    """Give Pillow the app's limit: it then refuses (`DecompressionBombError`) any image of more than twice as many
    pixels wherever it is opened in this process, and warns above it. For the app's process, not for libraries."""
    Image.MAX_IMAGE_PIXELS = max_megapixels * 1_000_000


def decode_upload(path: str | Path, name: str | None = None, max_megapixels: int = MAX_MEGAPIXELS) -> DecodedImage:
    """Decode the image file at `path`, which the person knows as `name` (default: the path's file name).

    Raises:
        UploadRefused: for a file that is empty, not an image, declares more than `max_megapixels` (checked from its
            header, before decoding) or is too small to click, with a message that names `name` and says what to do.
    """
    path = Path(path)
    shown = repr(name or path.name)
    if not path.is_file() or path.stat().st_size == 0:
        raise UploadRefused(f"{shown} is empty or missing: nothing to open.")
    notes = []
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_megapixels * 1_000_000:
                raise UploadRefused(_too_large(shown, width * height, max_megapixels, f"{width}x{height} pixels, "))
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                notes.append(f"{shown} holds {frames} frames or pages: the first is used.")
            working_size = _working_size(width, height)
            if working_size is not None:  # a JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least this size
                opened.draft(None, working_size)
            if opened.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # turned a quarter
                width, height = height, width
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)  # no copy of a large image
            image = opened
    except UploadRefused:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit (`limit_decoder_pixels`)
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise UploadRefused(_too_large(shown, int(found.group(1)) if found else None, max_megapixels)) from None
    except UnidentifiedImageError:
        raise UploadRefused(
            f"{shown} is not a readable image: upload a photo or picture file (JPEG, PNG, WebP, TIFF, BMP, GIF)."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadRefused(f"{shown} is not a readable image ({error}).") from None
    if min(height, width) < MIN_SIDE:
        raise UploadRefused(
            f"{shown} is {width}x{height} pixels: images need at least {MIN_SIDE} px on each side to be clicked."
        )
    working_size = _working_size(width, height)
    if working_size is not None:
        image = _reduced(image, working_size)
    pixels, conversion_notes = _to_rgb(image, shown)
    notes += conversion_notes
    if working_size is not None:
        notes.append(
            f"Downscaled from {width}x{height} to {working_size[0]}x{working_size[1]} (the app works up to "
            f"{MAX_SIDE} px)."
        )
    return DecodedImage(np.ascontiguousarray(pixels), tuple(notes), (height, width))


def _working_size(width: int, height: int) -> tuple[int, int] | None:
    """`(width, height)` of an image of `width x height` brought to at most `MAX_SIDE` px, or None if it fits."""
    if max(width, height) <= MAX_SIDE:
        return None
    scale = MAX_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _reduced(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` averaged down to `size` `(width, height)` in its own mode (16-bit and float values kept)."""
    if image.mode in ("1", "P", "PA"):  # indices cannot be averaged: their colours can
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    return image.resize(size, Image.Resampling.BOX)


def _too_large(shown: str, pixels: int | None, max_megapixels: int, dimensions: str = "") -> str:
    size = f"{dimensions}{pixels / 1e6:.0f} megapixels" if pixels else "far more pixels than that"
    return (
        f"{shown} is too large to open here ({size}; this app opens images up to {max_megapixels} megapixels: "
        f"{AppLimits.how_to_change('max_megapixels')}). Save a smaller copy (the app works at up to {MAX_SIDE} px "
        "on the longest side anyway) and upload that."
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
