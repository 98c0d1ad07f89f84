"""The app's logic, independent of the widgets: sessions of several images, the actions on them, the overlay and
the dataset export, and the stateless call (`segment`). Every session method takes an `AnnotationSession` and
returns the message for the status line; the Gradio layer (`gradio_app.py`) only wires widgets to these methods.
Whatever is over a limit (`limits.AppLimits`) is refused in words that name the limit, and the session keeps all
it had."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
import uuid
import weakref
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import export
from ..clicks import Click, clicks_from_json, without_instance
from ..models.dynamite.modeling_dynamite import DynamiteModel
from ..models.dynamite.processing_dynamite import DynamiteProcessor
from ..predictor import DynamitePredictor, default_processor
from .limits import AppLimits
from .scheduler import ComputeLanes
from .session import (
    DEFAULT_MAX_CACHE_MB,
    DEFAULT_MAX_SESSIONS,
    Annotation,
    AnnotationSession,
    ImageAnnotation,
    PredictorCache,
)
from .uploads import UploadRefused, decode_upload

# Export folders kept on disk (the newest ones): Gradio serves a copy from its own cache once the export
# returns, so older folders are only disk space on a long-running server.
MAX_EXPORTS_KEPT = 32
LOOK_RANGES = {"alpha": (0.0, 1.0), "radius": (0, 12)}  # the overlay's opacity and the click markers' radius (px)
MAX_CLASS_NAME = 64


class DynamiteApp:
    """Sessions over one model: uploads, clicks, classes, undo, moving between images, overlay, export.

    Args:
        max_sessions: images whose features stay cached, least recently used evicted first (one per session
            working at a time; an image moved away from is rebuilt from its file and clicks when it comes back).
        max_cache_mb: megabytes those cached features may hold together.
        limits: what one visitor may ask (`AppLimits`; default: its defaults).
    """

    def __init__(
        self,
        model: DynamiteModel,
        model_label: str,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_cache_mb: int = DEFAULT_MAX_CACHE_MB,
        processor: DynamiteProcessor | None = None,
        limits: AppLimits | None = None,
    ) -> None:
        if not isinstance(max_cache_mb, int) or max_cache_mb < 1:
            raise ValueError(f"`max_cache_mb` must be a positive integer (megabytes), got {max_cache_mb!r}")
        self.model = model.eval()
        self.model_label = model_label
        self.processor = processor if processor is not None else default_processor(model)
        self.limits = limits if limits is not None else AppLimits()
        self.lanes = ComputeLanes()
        # The lanes' threads end with the app (at exit they are daemon threads, ended with the process).
        weakref.finalize(self, self.lanes.close).atexit = False
        predictor_limits = {"max_instances": self.limits.max_instances, "max_clicks": self.limits.max_clicks}
        self.cache = PredictorCache(
            self.model, self.processor, max_sessions, max_cache_mb * 2**20, self.lanes, **predictor_limits
        )
        # The sessions by Gradio's session hash, to release what one holds when its page closes (`release`).
        self._sessions: weakref.WeakValueDictionary[str, AnnotationSession] = weakref.WeakValueDictionary()
        # One folder for everything the app writes: the sessions' uploads and the exports. Removed with the app,
        # or when the process exits.
        self.work_root = Path(tempfile.mkdtemp(prefix="dynamite-app-"))
        self.export_root = self.work_root / "exports"
        self.upload_root = self.work_root / "uploads"
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.work_root, ignore_errors=True)
        self._exports: deque[Path] = deque()
        self._exports_lock = threading.Lock()
        # Closed pages' sessions: (when to end it, its session hash, the session, its actions then).
        self._released: list[tuple[float, str, AnnotationSession, int]] = []

    def end_session(self, session: AnnotationSession) -> None:
        """Free what a session that went away held: its uploads on disk and its images' cached features. (Gradio
        calls this on its event loop: nothing here waits for the session's lock.)"""
        session.remove_files()
        self.cache.discard({image.key for image in session.images})
        self.lanes.memory_freed(cycles=True)

    def remember(self, session_hash: str, session: AnnotationSession) -> None:
        """Note which session Gradio's `session_hash` names (for `release`), at each of its actions."""
        session.actions += 1
        if session_hash:
            session.session_hash = session_hash
            self._sessions[session_hash] = session

    def release(self, session_hash: str) -> None:
        """The page of `session_hash` closed: free the cached features, pixels and label maps of its images at once,
        and the rest (`end_quiet_sessions`) `limits.closed_session_seconds` later unless it acted again meanwhile (a
        connection that dropped and came back: then whatever was freed is rebuilt). Gradio itself would keep a closed
        session's state for an hour, so its uploads would fill the disk as fast as a visitor can upload, and its
        bookkeeping of the session until 10,000 newer sessions push it out."""
        session = self._sessions.pop(session_hash, None)
        if session is not None:
            self.cache.discard({image.key for image in session.images})
            with self._exports_lock:
                due = time.monotonic() + self.limits.closed_session_seconds
                self._released.append((due, session_hash, session, session.actions))

    def end_quiet_sessions(self) -> list[str]:
        """End the closed pages' sessions whose grace period is over and that did not act again (`end_session`);
        returns their session hashes, whose state the web framework may then drop."""
        now = time.monotonic()
        with self._exports_lock:
            due = [entry for entry in self._released if entry[0] <= now]
            self._released = [entry for entry in self._released if entry[0] > now]
        ended = []
        for _, session_hash, session, actions in due:
            if session.actions == actions:
                self.end_session(session)
                ended.append(session_hash)
        return ended

    # -- images -------------------------------------------------------------------------------------------
    def add_images(self, session: AnnotationSession, paths: Sequence[str | Path]) -> str:
        """Add the uploaded files to the session and show the first one that could be opened. Gradio hands over
        temporary copies named as the user's files: those names are the images' names. Nothing already in the
        session changes; a file that cannot be used is named in the message."""
        refused, added, notes = [], [], []
        first_pixels = None
        for path in paths:
            path = Path(path)
            name = path.name
            if len(session.images) >= self.limits.max_images:
                refused.append(
                    f"⚠️ '{name}' was not added: this session holds {len(session.images)} images, the most the app "
                    f"allows in one session ({AppLimits.how_to_change('max_images')}). Export the dataset, then "
                    "reload the page to start a new session."
                )
                continue
            same = next(
                (image for image in session.images if image.stem.casefold() == Path(name).stem.casefold()), None
            )
            if same is not None:
                refused.append(
                    f"⚠️ '{name}' was not added: image {session.images.index(same) + 1}, '{same.name}', has the same "
                    "name, and the export names each image's masks after it. Rename one of them to add it."
                )
                continue
            try:
                decoded = self.lanes.run(
                    session.uid,
                    lambda path=path, name=name: decode_upload(path, name, self.limits.max_megapixels),
                    background=True,
                )
            except UploadRefused as error:
                refused.append(f"⚠️ {error}")
                continue
            key = uuid.uuid4().hex
            source = session.make_folder(self.upload_root) / f"{key}{path.suffix}"
            shutil.copyfile(path, source)
            image = ImageAnnotation(
                name=name,
                source=source,
                size=decoded.pixels.shape[:2],
                key=key,
                max_history_bytes=self.limits.max_history_kb * 1024,
            )
            session.images.append(image)
            added.append(image)
            if first_pixels is None:  # kept to show it; the others' pixels go now (50 photos take 470 MB)
                first_pixels = decoded.pixels
            notes += decoded.notes
        if not added:
            kept = " The images already here are kept." if session.images else ""
            return " ".join(refused) + kept if refused else "Upload an image or pick an example."
        shown = self._show(session, session.images.index(added[0]), first_pixels)
        count = f"Added {len(added)} images. " if len(added) > 1 else ""
        return " ".join([f"{count}{shown}", *notes, *refused])

    def show_image(self, session: AnnotationSession, index: Any) -> str:
        """Show image `index` (0-based); its clicks and masks are as they were left."""
        if not session.images:
            return "⚠️ Upload an image first."
        if not _is_number(index) or not 0 <= int(index) < len(session.images):
            return f"⚠️ There is no image {index!r}: the session has images 1 to {len(session.images)}."
        return self._show(session, int(index))

    def step_image(self, session: AnnotationSession, step: int) -> str:
        """Show the next (`step` 1) or previous (-1) image, wrapping around."""
        if not session.images:
            return "⚠️ Upload an image first."
        return self._show(session, (session.current + step) % len(session.images))

    def _show(self, session: AnnotationSession, index: int, pixels: np.ndarray | None = None) -> str:
        leaving = session.image
        if leaving is not None and index != session.current:
            self._keep_exact(session, leaving)
        session.current = index
        image = session.images[index]
        start = time.perf_counter()
        cached = image.key in self.cache
        self.cache.overlay(image, session.uid, pixels)
        height, width = image.size
        place = f"Image {index + 1}/{len(session.images)} '{image.name}' {width}x{height}"
        features = "" if cached else f" ({time.perf_counter() - start:.2f} s for the image features)"
        instances = f", {image.num_instances} instance(s)" if image.num_instances else ""
        return f"{place} ready{features}{instances}."

    def _keep_exact(self, session: AnnotationSession, image: ImageAnnotation) -> None:
        """Store the exact masks of `image` (a PNG beside its upload), so an export needs no model run for it."""
        if image.num_instances and (image.exact is None or image.exact[0] != image.annotation):
            label_map = self.cache.label_map(image, session.uid)
            image.exact_path.write_bytes(_encode_label_map(label_map))
            image.exact = (image.annotation, image.exact_path)

    def exact_label_map(self, session: AnnotationSession, image: ImageAnnotation) -> np.ndarray:
        """`(H, W)` int32 label map at the image's size (0 = background, k = instance k, numbered from 1)."""
        if image.num_instances == 0:
            return np.zeros(image.size, dtype=np.int32)
        if image.exact is not None and image.exact[0] == image.annotation and image.exact[1].is_file():
            return _decode_label_map(image.exact[1].read_bytes())
        self._keep_exact(session, image)
        return self.cache.label_map(image, session.uid)

    # -- actions on the image shown -----------------------------------------------------------------------
    def click(
        self, session: AnnotationSession, row: Any, col: Any, background: bool, image: ImageAnnotation | None = None
    ) -> str:
        """A click at `(row, col)` in pixels of the image (not of the overlay: see `click_display`), on `image`
        (default: the one shown)."""
        image = image or session.image
        if image is None:
            return "⚠️ Upload an image (or pick an example) before clicking."
        for name, value in (("row", row), ("col", col)):
            if not _is_number(value):
                side = "top" if name == "row" else "left"
                return f"⚠️ {name} must be a number (pixels from the {side} of the image), got {value!r}."
        row, col = float(row), float(col)
        height, width = image.size
        if not (0 <= row < height and 0 <= col < width):
            return f"⚠️ Click at (x={col:.0f}, y={row:.0f}) is outside the {width}x{height} image."
        annotation = image.annotation
        instance = None if background else min(image.selected, annotation.num_instances)
        if len(annotation.clicks) >= self.limits.max_clicks:
            return (
                f"⚠️ Click not added: this image has {len(annotation.clicks)} clicks, the most the app allows on one "
                f"image ({AppLimits.how_to_change('max_clicks')}). Undo, remove an instance or reset to click again."
            )
        if instance is not None and instance == annotation.num_instances:
            refusal = self._instance_refusal(image)
            if refusal:
                return refusal
        classes = annotation.classes
        if instance is not None and instance == annotation.num_instances:
            classes = (*classes, session.new_class)
        click = Click(instance, row, col, len(annotation.clicks))
        history, trimmed = list(image.history), image.history_trimmed
        image.push(Annotation((*annotation.clicks, click), classes))
        try:
            start = time.perf_counter()
            _, label_map = self.cache.overlay(image, session.uid)
            milliseconds = 1000 * (time.perf_counter() - start)
        except Exception as error:  # keep the session's clicks whatever failed
            image.history, image.history_trimmed = history, trimmed
            return f"⚠️ The click could not be processed ({error}); your earlier clicks are kept."
        if instance is not None:
            image.selected = instance
        kind = "background" if instance is None else f"instance {instance + 1}"
        where = "" if image is session.image else f" of '{image.name}' (the image shown when you clicked)"
        return (
            f"Click on {kind} at (x={col:.0f}, y={row:.0f}){where}: {milliseconds:.0f} ms."
            f"{_empty_note(label_map, image.num_instances)}"
        )

    def click_display(self, session: AnnotationSession, key: Any, x: Any, y: Any, background: bool) -> str:
        """A click the page made at `(x, y)` in pixels of the overlay of the image `key` (the one it showed)."""
        image = session.find(key) if isinstance(key, str) and key else session.image
        if image is None:
            return "⚠️ Upload an image (or pick an example) before clicking."
        if not (_is_number(x) and _is_number(y)):
            return f"⚠️ The click's position must be numbers, got x={x!r}, y={y!r}."
        row, col = image.image_point(float(y), float(x))
        return self.click(session, row, col, background, image)

    def _instance_refusal(self, image: ImageAnnotation) -> str:
        """The refusal of a new instance on `image` once it holds the most the app allows, else ""."""
        if image.num_instances < self.limits.max_instances:
            return ""
        return (
            f"⚠️ No new instance: this image has {image.num_instances} instances, the most the app allows on one "
            f"image ({AppLimits.how_to_change('max_instances')}). Select an instance to refine it, or remove one."
        )

    def add_instance(self, session: AnnotationSession) -> str:
        image = session.image
        if image is None:
            return "⚠️ Upload an image first."
        refusal = self._instance_refusal(image)
        if refusal:
            return refusal
        image.selected = image.num_instances
        return f"Next click starts instance {image.selected + 1} ({session.new_class})."

    def select_instance(self, session: AnnotationSession, instance: Any) -> str:
        """Clicks go to `instance` (0-based; `num_instances` for a new one); its class is shown for renaming."""
        image = session.image
        if image is None:
            return "⚠️ Upload an image first."
        if not _is_number(instance):
            return f"⚠️ instance must be a number, got {instance!r}."
        selected = max(0, min(int(instance), image.num_instances))
        if selected == image.num_instances:
            refusal = self._instance_refusal(image)
            if refusal:
                return refusal
        image.selected = selected
        if image.selected == image.num_instances:
            return f"Next click starts instance {image.selected + 1} ({session.new_class})."
        return f"Clicks now refine instance {image.selected + 1} ({image.annotation.classes[image.selected]})."

    def set_class(self, session: AnnotationSession, name: Any) -> str:
        """Name the class of the selected instance (and of the instances started from now on)."""
        name = " ".join(str(name or "").split())
        if not name:
            return "⚠️ A class needs a name: type one (for example 'cat') and press Enter."
        if len(name) > MAX_CLASS_NAME:
            return f"⚠️ Class names are limited to {MAX_CLASS_NAME} characters; this one has {len(name)}."
        if name not in session.classes:
            session.classes.append(name)
        session.new_class = name
        image = session.image
        if image is None or image.selected >= image.num_instances:
            return f"New instances will be '{name}'."
        annotation = image.annotation
        if annotation.classes[image.selected] == name:
            return f"Instance {image.selected + 1} is '{name}'; new instances will be too."
        classes = list(annotation.classes)
        classes[image.selected] = name
        image.push(replace(annotation, classes=tuple(classes)))
        return f"Instance {image.selected + 1} is now '{name}'; new instances will be too."

    def undo(self, session: AnnotationSession) -> str:
        image = session.image
        if image is not None and len(image.history) <= 1 and image.history_trimmed:
            return (
                f"Nothing more to undo: the undo history keeps the last {self.limits.max_history_kb} KB of steps per "
                f"image ({AppLimits.how_to_change('max_history_kb')})."
            )
        if image is None or len(image.history) <= 1:
            return "Nothing to undo."
        image.history.pop()
        image.selected = min(image.selected, image.num_instances)
        return "Undone."

    def remove_instance(self, session: AnnotationSession) -> str:
        image = session.image
        if image is None or image.selected >= image.num_instances:
            return "⚠️ Select an existing instance to remove."
        target, annotation = image.selected, image.annotation
        classes = annotation.classes[:target] + annotation.classes[target + 1 :]
        image.push(Annotation(tuple(without_instance(list(annotation.clicks), target)), classes))
        image.selected = max(0, min(target, image.num_instances - 1))
        return f"Removed instance {target + 1}; the instances after it moved down by one (Undo brings it back)."

    def reset(self, session: AnnotationSession) -> str:
        image = session.image
        if image is None or not image.clicks:
            return "Nothing to clear."
        image.push(Annotation())
        image.selected = 0
        return "All clicks on this image cleared (Undo brings them back)."

    def set_look(self, session: AnnotationSession, name: str, value: Any) -> str:
        """Set `alpha`, `radius` or `masks_only`; a value out of range is clamped and a non-number kept as it
        was, both said in words."""
        look = session.look
        if name == "masks_only":
            look.masks_only = bool(value)
            return "Showing the masks only." if look.masks_only else "Showing the masks over the image."
        if name not in LOOK_RANGES:
            return f"⚠️ Unknown view setting {name!r}."
        low, high = LOOK_RANGES[name]
        label = {"alpha": "Alpha (mask opacity)", "radius": "Click radius"}[name]
        current = getattr(look, name)
        if not _is_number(value):
            return f"⚠️ {label} needs a number from {low:g} to {high:g}; it stays {current:g}."
        number = float(value)
        clamped = min(max(number, low), high)
        setattr(look, name, int(round(clamped)) if name == "radius" else clamped)
        if clamped != number:
            return f"⚠️ {label} goes from {low:g} to {high:g}: {number:g} was set to {getattr(look, name):g}."
        return f"{label}: {getattr(look, name):g}."

    # -- the page's actions -------------------------------------------------------------------------------
    def apply(self, session: AnnotationSession, actions: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Apply the page's actions in order; (status messages, export files of the last export, if any).

        Each action is a dict with a `kind`: `click` (`key`, `x`, `y` in overlay pixels, `background`),
        `add_instance`, `select_instance` (`instance`, 0-based), `class` (`name`), `undo`, `remove_instance`,
        `reset`, `image` (`index`, 0-based), `next`, `previous`, `look` (`alpha`, `radius` or `masks_only`),
        `export`.
        """
        messages, files = [], []
        for action in actions:
            kind = action.get("kind") if isinstance(action, dict) else None
            if kind == "click":
                background = bool(action.get("background"))
                message = self.click_display(session, action.get("key"), action.get("x"), action.get("y"), background)
            elif kind in ("add_instance", "undo", "remove_instance", "reset"):
                message = getattr(self, kind)(session)
            elif kind == "select_instance":
                message = self.select_instance(session, action.get("instance"))
            elif kind == "class":
                message = self.set_class(session, action.get("name"))
            elif kind == "image":
                message = self.show_image(session, action.get("index"))
            elif kind in ("next", "previous"):
                message = self.step_image(session, 1 if kind == "next" else -1)
            elif kind == "look":
                message = " ".join(self.set_look(session, name, action[name]) for name in action if name in _LOOK_KEYS)
            elif kind == "export":
                files, message = self.export(session)
            else:
                message = f"⚠️ Unknown action {kind!r}: ignored."
            messages.append(message)
        return messages, files

    # -- views --------------------------------------------------------------------------------------------
    def render(self, session: AnnotationSession) -> np.ndarray | None:
        """The overlay of the image shown, at display size, with the masks previewed at that size."""
        image = session.image
        if image is None:
            return None
        display, label_map = self.cache.overlay(image, session.uid)
        selected = image.selected if image.selected < image.num_instances else None
        look = session.look
        return export.render_overlay(
            display,
            label_map,
            image.display_clicks(),
            look.alpha,
            look.radius,
            masks_only=look.masks_only,
            selected=selected,
        )

    def export(self, session: AnnotationSession) -> tuple[list[str], str]:
        """Every image of the session as one dataset: `dataset.zip` (COCO JSON, label maps in grey and in colour,
        per-instance masks) and the same `coco.json` on its own, written in the background lane. Returns (file
        paths, message)."""
        return self.lanes.run(session.uid, lambda: self._export(session), background=True)

    def _export(self, session: AnnotationSession) -> tuple[list[str], str]:
        images = session.images
        if not any(image.num_instances for image in images):
            return [], "⚠️ Nothing to export yet: click on an object first."
        used = {name for image in images for name in image.annotation.classes}
        categories = [name for name in session.classes if name in used]
        category_ids = {name: index + 1 for index, name in enumerate(categories)}
        folder = self.export_root / uuid.uuid4().hex
        dataset = folder / "dataset"
        coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        notes = []
        for image_id, image in enumerate(images, start=1):
            label_map = self.exact_label_map(session, image)
            height, width = image.size
            coco["images"].append({"id": image_id, "file_name": image.name, "height": height, "width": width})
            coco["annotations"] += export.coco_annotations(
                label_map,
                image_id,
                first_id=len(coco["annotations"]) + 1,
                num_instances=image.num_instances,
                category_ids=[category_ids[name] for name in image.annotation.classes],
                first_instance_number=1,
            )
            export.save_label_map(label_map, _made(dataset / "label_maps") / f"{image.stem}.png")
            if image.num_instances <= 255:
                export.save_palette_label_map(label_map, _made(dataset / "label_maps_color") / f"{image.stem}.png")
            else:
                notes.append(f"'{image.name}' has more than 255 instances: no colour label map for it.")
            export.save_instance_masks(
                label_map, dataset / "instance_masks" / image.stem, num_instances=image.num_instances, first_number=1
            )
            empty = export.empty_instances(label_map, image.num_instances)
            if empty:
                numbers = ", ".join(str(k + 1) for k in empty)
                notes.append(f"'{image.name}': instance(s) {numbers} empty (no pixel went to them; exported empty).")
        coco["categories"] = [{"id": category_ids[name], "name": name} for name in categories]
        (dataset / "coco.json").write_text(json.dumps(coco))
        with zipfile.ZipFile(folder / "dataset.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(dataset.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(dataset).as_posix())
        files = [str(folder / "dataset.zip"), str(dataset / "coco.json")]
        with self._exports_lock:
            self._exports.append(folder)
            stale = [self._exports.popleft() for _ in range(len(self._exports) - MAX_EXPORTS_KEPT)]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        num_instances = sum(image.num_instances for image in images)
        unannotated = sum(image.num_instances == 0 for image in images)
        without = f" ({unannotated} without instances)" if unannotated else ""
        message = (
            f"Exported {len(images)} image(s){without}, {num_instances} instance(s) in {len(categories)} "
            f"class(es): {', '.join(categories)}."
        )
        return files, " ".join([message, *notes])

    # -- the stateless call ---------------------------------------------------------------------------------
    def segment(self, path: str | Path, clicks: Any, owner: str = "", name: str | None = None) -> tuple[str, dict]:
        """One image and its clicks in, its masks out, nothing kept: the label map as a PNG file and the COCO dict.

        `clicks`: a list of `{"row": y, "col": x, "instance": k or null}` (or that list as a JSON string) in pixels of
        the image file, in the order they were made (`clicks.clicks_from_json`; 0-based instances, as the batch
        command's clicks file). The image is decoded as uploads are (at most `uploads.MAX_SIDE` px: a larger one is
        downscaled, its clicks with it); the label map has that size, 0 = background, k + 1 = instance k; COCO holds
        one annotation per clicked instance (`"instance": k`).

        Raises:
            ValueError (`UploadRefused` for the image): naming what was refused and the limit, if any.
        """
        if isinstance(clicks, str):
            if len(clicks) > self.limits.max_request_kb * 1024:
                raise ValueError(f"clicks: more than {self.limits.max_request_kb} KB of JSON")
            try:
                clicks = json.loads(clicks)
            except json.JSONDecodeError as error:
                raise ValueError(f"clicks is not valid JSON ({error})") from None
        if isinstance(clicks, dict) and "clicks" in clicks:
            clicks = clicks["clicks"]
        parsed = clicks_from_json(clicks, "clicks")
        num_instances = len({click.instance for click in parsed if click.instance is not None})
        for count, limit, what in (
            (num_instances, "max_instances", "instances"),
            (len(parsed), "max_clicks", "clicks"),
        ):
            if count > getattr(self.limits, limit):
                raise ValueError(
                    f"clicks: {count} {what}, more than the {getattr(self.limits, limit)} the app allows on one image "
                    f"({AppLimits.how_to_change(limit)})"
                )
        shown = name or Path(path).name
        limits = {"max_instances": self.limits.max_instances, "max_clicks": self.limits.max_clicks}

        folder = self.export_root / uuid.uuid4().hex

        def compute() -> tuple[Path, dict]:
            decoded = decode_upload(path, shown, self.limits.max_megapixels)
            height, width = decoded.pixels.shape[:2]
            original_height, original_width = decoded.original_size
            scale_row, scale_col = height / original_height, width / original_width
            predictor = DynamitePredictor(self.model, self.processor, max_history_mb=None, **limits)
            predictor.set_image(decoded.pixels)
            scaled = [replace(c, row=c.row * scale_row, col=c.col * scale_col) for c in parsed]
            for click, original in zip(scaled, parsed, strict=True):
                if not (0 <= click.row < height and 0 <= click.col < width):
                    raise ValueError(
                        f"clicks[{original.timestamp}] at (row={original.row:g}, col={original.col:g}) lies outside "
                        f"the {original_width}x{original_height} image"
                    )
            label_map = predictor.label_map_of(scaled)
            png = export.save_label_map(label_map, _made(folder) / f"{Path(shown).stem}_label_map.png")
            return png, export.to_coco(label_map, file_name=shown, num_instances=num_instances)

        png, coco = self.lanes.run(owner, compute, background=True)
        with self._exports_lock:
            self._exports.append(folder)
            stale = [self._exports.popleft() for _ in range(len(self._exports) - MAX_EXPORTS_KEPT)]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return str(png), coco


_LOOK_KEYS = ("alpha", "radius", "masks_only")


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _encode_label_map(label_map: np.ndarray) -> bytes:
    array = label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("could not PNG-encode a label map")
    return encoded.tobytes()


def _decode_label_map(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.int32)


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _empty_note(label_map: np.ndarray, num_instances: int) -> str:
    """A note naming the clicked instances that got no pixel (numbered from 1, as in the UI), or ""."""
    empty = [str(k + 1) for k in export.empty_instances(label_map, num_instances)]
    if not empty:
        return ""
    if len(empty) == 1:
        return f" Instance {empty[0]} is empty (no pixel went to it); it is exported as an empty mask."
    return f" Instances {', '.join(empty)} are empty (no pixel went to them); they are exported as empty masks."
