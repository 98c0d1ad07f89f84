"""The Gradio app: click-based multi-instance segmentation in the browser (see `app.py` at the repository root).

Each browser session keeps its image and click history in a `gr.State` (the source of truth, so nothing the
user made is lost on an error or an eviction). The expensive per-image features live in a bounded LRU cache of
`DynamitePredictor`s keyed by session; an evicted session's predictor is rebuilt from its state on its next
click (one per-image pass plus one prediction).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
import zipfile
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from .. import export
from ..clicks import Click, without_instance
from ..models.dynamite.image_processing_dynamite import DynamiteImageProcessor, load_image
from ..models.dynamite.modeling_dynamite import DynamiteModel
from ..models.dynamite.processing_dynamite import DynamiteProcessor
from ..predictor import DynamitePredictor, default_processor, load_processor

MAX_SIDE = 2048  # uploads larger than this on their longest side are downscaled (with a notice)
MIN_SIDE = 32  # uploads smaller than this on a side are refused: too small to click in the browser
# The overlay is drawn and sent with its longest side in this range: a 2-MP overlay took ~110 ms to draw and
# encode per click, and its transfer more, for a picture the browser shows at about 1000 px anyway. Small
# images are enlarged (nearest neighbour) so they can be clicked. Exports stay at the image's own size.
DISPLAY_SIDES = (512, 1024)
DEFAULT_MAX_SESSIONS = 8
# Bytes of cached image features (and label maps) across sessions: the CPU model's features of a 2-MP photo
# take about 46 MB, a converted Swin-L's at 800x1216 several hundred.
DEFAULT_MAX_CACHE_MB = 2048
# Export folders kept on disk (the newest ones): Gradio serves a copy from its own cache once the export
# returns, so older folders are only disk space on a long-running server.
MAX_EXPORTS_KEPT = 32
# Gradio's cache of uploads and served files: checked hourly, files older than a day deleted.
GRADIO_DELETE_CACHE = (3600, 86400)


def display_size(height: int, width: int) -> tuple[int, int]:
    """`(height, width)` of the overlay for an image of `height x width`: longest side within `DISPLAY_SIDES`."""
    longest = max(height, width)
    scale = min(max(longest, DISPLAY_SIDES[0]), DISPLAY_SIDES[1]) / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class SessionState:
    """What one browser session made: its image, click history (for undo) and UI choices."""

    image: np.ndarray | None = None
    image_key: str = ""
    history: list[list[Click]] = field(default_factory=lambda: [[]])
    selected: int = 0  # the instance positive clicks go to; == num_instances means "a new one"
    display: np.ndarray | None = None  # the image at the overlay's size (see `display_size`)

    @property
    def clicks(self) -> list[Click]:
        return self.history[-1]

    @property
    def num_instances(self) -> int:
        return 1 + max((c.instance for c in self.clicks if c.instance is not None), default=-1)

    def image_point(self, display_row: int, display_col: int) -> tuple[float, float]:
        """The centre of overlay pixel `(display_row, display_col)` as `(row, col)` in the image's frame."""
        height, width = self.image.shape[:2]
        display_height, display_width = self.display.shape[:2]
        return (display_row + 0.5) * height / display_height, (display_col + 0.5) * width / display_width

    def display_clicks(self) -> list[Click]:
        """The clicks with their coordinates in the overlay's frame (for drawing)."""
        scale_row = self.display.shape[0] / self.image.shape[0]
        scale_col = self.display.shape[1] / self.image.shape[1]
        return [replace(c, row=c.row * scale_row, col=c.col * scale_col) for c in self.clicks]


@dataclass
class _CachedSession:
    image_key: str
    predictor: DynamitePredictor
    # The last label map per output size (overlay, export) with the clicks it is for: redrawing after an alpha
    # or radius change, or exporting twice, costs no prediction. Two sizes at most, so memory stays bounded.
    results: dict[tuple[int, int] | None, tuple[tuple[Click, ...], np.ndarray]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return self.predictor.nbytes() + sum(label_map.nbytes for _, label_map in self.results.values())


class PredictorCache:
    """At most `max_sessions` predictors (cached image features) holding at most `max_bytes` together, least
    recently used evicted first. The session being served is always kept, even alone over `max_bytes`."""

    def __init__(
        self,
        model: DynamiteModel,
        processor: DynamiteProcessor,
        max_sessions: int,
        max_bytes: int = DEFAULT_MAX_CACHE_MB * 2**20,
    ) -> None:
        for name, value in (("max_sessions", max_sessions), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        self.model, self.processor = model, processor
        self.max_sessions, self.max_bytes = max_sessions, max_bytes
        self._sessions: OrderedDict[str, _CachedSession] = OrderedDict()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time: 2 cores, and torch threads are shared

    def __len__(self) -> int:
        return len(self._sessions)

    def nbytes(self) -> int:
        """Bytes held by the cached sessions' image features and label maps."""
        with self._lock:
            return sum(entry.nbytes() for entry in self._sessions.values())

    def label_map(self, session: str, state: SessionState, size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of `state`'s clicks, reusing or rebuilding the session's cached features: at `size`, the
        preview to draw (`DynamitePredictor.preview_label_map`); by default the exact masks at the image's size.
        The predictor's own history is not used: the state holds the clicks."""
        with self._lock:
            entry = self._sessions.pop(session, None)
            if entry is not None and entry.image_key != state.image_key:
                entry = None
        clicks = tuple(state.clicks)
        result = entry.results.get(size) if entry is not None else None
        if result is None or result[0] != clicks:
            with self._model_lock:
                if entry is None:
                    predictor = DynamitePredictor(self.model, self.processor)
                    predictor.set_image(state.image)
                    entry = _CachedSession(state.image_key, predictor)
                predictor = entry.predictor
                if size is None:
                    result = (clicks, predictor.label_map_of(list(clicks)))
                else:
                    result = (clicks, predictor.preview_label_map(list(clicks), size))
            entry.results[size] = result
        with self._lock:
            self._sessions[session] = entry
            sizes = {key: cached.nbytes() for key, cached in self._sessions.items()}
            total = sum(sizes.values())
            while len(self._sessions) > 1 and (len(self._sessions) > self.max_sessions or total > self.max_bytes):
                evicted, _ = self._sessions.popitem(last=False)
                total -= sizes[evicted]
        return result[1]


def example_images(folder: Path) -> list[str]:
    """A few generated example scenes (no image files ship with the package)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for index, shapes in enumerate(
        [
            [("ellipse", (60, 80, 220, 260), (200, 60, 50)), ("rectangle", (300, 120, 480, 300), (40, 90, 200))],
            [("ellipse", (40, 40, 200, 200), (230, 200, 40)), ("ellipse", (250, 150, 420, 330), (60, 160, 80))],
        ]
    ):
        base = rng.normal(0, 10, (360, 540, 3)) + np.linspace(80, 170, 540)[None, :, None]
        image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for kind, box, color in shapes:
            getattr(draw, kind)(box, fill=color)
        path = folder / f"example_{index}.png"
        image.save(path)
        paths.append(str(path))
    return paths


class DynamiteApp:
    """The app's logic, independent of the widgets (so it can be tested and reused)."""

    def __init__(
        self,
        model: DynamiteModel,
        model_label: str,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_cache_mb: int = DEFAULT_MAX_CACHE_MB,
        processor: DynamiteProcessor | None = None,
    ) -> None:
        if not isinstance(max_cache_mb, int) or max_cache_mb < 1:
            raise ValueError(f"`max_cache_mb` must be a positive integer (megabytes), got {max_cache_mb!r}")
        self.model = model.eval()
        self.model_label = model_label
        self.processor = processor if processor is not None else default_processor(model)
        self.cache = PredictorCache(self.model, self.processor, max_sessions, max_cache_mb * 2**20)
        self.export_root = Path(tempfile.mkdtemp(prefix="dynamite-exports-"))
        # Removed with the app, or when the process exits.
        self._remove_exports = weakref.finalize(self, shutil.rmtree, self.export_root, ignore_errors=True)
        self._exports: deque[Path] = deque()
        self._exports_lock = threading.Lock()

    # -- actions: each takes the session state and returns (state, message) ------------------------------
    def load(self, state: SessionState, source: Any, session: str) -> tuple[SessionState, str]:
        # Gradio hands over a temporary copy named as the user's file: name that, not the server's folder.
        name = Path(source).name if isinstance(source, (str, Path)) else None
        try:
            image = load_image(source, argument="the upload", name=name)
        except ValueError as error:
            return state, f"⚠️ {error}"
        if min(image.shape[:2]) < MIN_SIDE:
            shown = f" {name!r}" if name else ""
            return state, (
                f"⚠️ The upload{shown} is {image.shape[1]}x{image.shape[0]} pixels: images need at least {MIN_SIDE} px "
                "on each side to be clicked. The previous image and its clicks are kept."
            )
        notice = ""
        if max(image.shape[:2]) > MAX_SIDE:
            scale = MAX_SIDE / max(image.shape[:2])
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            notice = f" Downscaled from {image.shape[1]}x{image.shape[0]} to {size[0]}x{size[1]} (limit {MAX_SIDE} px)."
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        height, width = display_size(*image.shape[:2])
        enlarge = height > image.shape[0]
        display = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST if enlarge else cv2.INTER_AREA)
        state = SessionState(image=image, image_key=uuid.uuid4().hex, display=display)
        start = time.perf_counter()
        self.cache.label_map(session, state, display.shape[:2])
        seconds = time.perf_counter() - start
        return state, f"Image {image.shape[1]}x{image.shape[0]} ready ({seconds:.2f} s for the image features).{notice}"

    def click(
        self, state: SessionState, row: float, col: float, background: bool, session: str
    ) -> tuple[SessionState, str]:
        """A click at `(row, col)` in pixels of the image (not of the overlay: see `SessionState.image_point`)."""
        if state.image is None:
            return state, "⚠️ Upload an image (or pick an example) before clicking."
        for name, value in (("row", row), ("col", col)):
            if not _is_number(value):
                side = "top" if name == "row" else "left"
                return state, f"⚠️ {name} must be a number (pixels from the {side} of the image), got {value!r}."
        row, col = float(row), float(col)
        height, width = state.image.shape[:2]
        if not (0 <= row < height and 0 <= col < width):
            return state, f"⚠️ Click at (x={col:.0f}, y={row:.0f}) is outside the {width}x{height} image."
        instance = None if background else min(state.selected, state.num_instances)
        click = Click(instance, float(row), float(col), len(state.clicks))
        previous = state.history
        state.history = [*previous, [*state.clicks, click]]
        try:
            start = time.perf_counter()
            label_map = self.cache.label_map(session, state, state.display.shape[:2])
            milliseconds = 1000 * (time.perf_counter() - start)
        except Exception as error:  # keep the session's clicks whatever failed
            state.history = previous
            return state, f"⚠️ The click could not be processed ({error}); your earlier clicks are kept."
        if instance is not None:
            state.selected = instance
        kind = "background" if instance is None else f"instance {instance + 1}"
        return state, f"Click on {kind}: {milliseconds:.0f} ms.{_empty_note(label_map, state.num_instances)}"

    def add_instance(self, state: SessionState) -> tuple[SessionState, str]:
        state.selected = state.num_instances
        return state, f"Next click starts instance {state.selected + 1}."

    def select_instance(self, state: SessionState, instance: int) -> tuple[SessionState, str]:
        state.selected = max(0, min(int(instance), state.num_instances))
        return state, f"Clicks now refine instance {state.selected + 1}."

    def undo(self, state: SessionState) -> tuple[SessionState, str]:
        if len(state.history) <= 1:
            return state, "Nothing to undo."
        state.history = state.history[:-1]
        state.selected = min(state.selected, state.num_instances)
        return state, "Undone."

    def remove_instance(self, state: SessionState) -> tuple[SessionState, str]:
        target = state.selected
        if target >= state.num_instances:
            return state, "⚠️ Select an existing instance to remove."
        shifted = without_instance(state.clicks, target)
        state.history = [*state.history, shifted]
        state.selected = max(0, min(target, state.num_instances - 1))
        return state, f"Removed instance {target + 1}; the instances after it moved down by one."

    def reset(self, state: SessionState) -> tuple[SessionState, str]:
        state.history, state.selected = [[]], 0
        return state, "All clicks cleared."

    # -- views -------------------------------------------------------------------------------------------
    def render(
        self, state: SessionState, session: str, alpha: float, radius: float, masks_only: bool
    ) -> np.ndarray | None:
        """The overlay at display size (`state.display`), with the masks previewed at that size."""
        if state.image is None:
            return None
        label_map = self.cache.label_map(session, state, state.display.shape[:2])
        selected = state.selected if state.selected < state.num_instances else None
        return export.render_overlay(
            state.display,
            label_map,
            state.display_clicks(),
            alpha,
            int(radius),
            masks_only=masks_only,
            selected=selected,
        )

    def export(self, state: SessionState, session: str) -> tuple[list[str], str]:
        if state.image is None or state.num_instances == 0:
            return [], "⚠️ Nothing to export yet: click on an object first."
        label_map = self.cache.label_map(session, state)  # at the image's own size
        folder = self.export_root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        export.save_label_map(label_map, folder / "label_map.png")
        # Every clicked instance is exported, an empty mask included, so all three files agree with the message.
        export.save_coco(label_map, folder / "coco.json", file_name="image.png", num_instances=state.num_instances)
        paths = export.save_instance_masks(label_map, folder / "instances", num_instances=state.num_instances)
        with zipfile.ZipFile(folder / "instance_masks.zip", "w") as archive:
            for path in paths:
                archive.write(path, path.name)
        files = [str(folder / name) for name in ("label_map.png", "instance_masks.zip", "coco.json")]
        with self._exports_lock:
            self._exports.append(folder)
            stale = [self._exports.popleft() for _ in range(len(self._exports) - MAX_EXPORTS_KEPT)]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return files, f"Exported {state.num_instances} instance(s).{_empty_note(label_map, state.num_instances)}"


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


def load_app_model(model: str | None) -> tuple[DynamiteModel, DynamiteProcessor, str]:
    """The model and processor named by `model`, else `$DYNAMITE_MODEL`, else the bundled default, else a labelled
    fallback; and the model's label for the page."""
    from ..models.dynamite.configuration_dynamite import DynamiteConfig
    from ..training.imagenet import load_imagenet_backbone

    name = model or os.environ.get("DYNAMITE_MODEL")
    bundled = Path(__file__).resolve().parents[2] / "models" / "dynamite-mobilenet-v2"
    if name or (bundled / "config.json").is_file():
        source = name or bundled
        return DynamiteModel.from_pretrained(source), load_processor(source), name or f"bundled {bundled.name}"
    label = "FALLBACK: CPU preset with an untrained head (no trained model bundled yet): masks are not meaningful"
    fallback = DynamiteModel(DynamiteConfig.from_preset("mobilenet_v2"))
    try:
        load_imagenet_backbone(fallback)
    except FileNotFoundError:  # the ImageNet weights package is not installed
        label += " (and a random backbone)"
    return fallback, DynamiteProcessor(DynamiteImageProcessor.from_preset("mobilenet_v2")), label


def build_demo(app: DynamiteApp):
    """The Gradio Blocks UI over `app`."""
    examples = example_images(app.export_root / "examples")

    def session_of(request: gr.Request) -> str:
        return request.session_hash or "default"

    def instance_choices(state: SessionState):
        choices = [(f"Instance {k + 1}", k) for k in range(state.num_instances + 1)]
        choices[-1] = (f"Instance {state.num_instances + 1} (new)", state.num_instances)
        return gr.update(choices=choices, value=min(state.selected, state.num_instances))

    def view(state, message, alpha, radius, masks_only, request: gr.Request, before=None):
        """The outputs after an action; `before` = `snapshot(state)` from before it: the downloads of earlier
        masks are cleared once the image or the clicks changed, and the instance list is sent only when it
        changed (most clicks: re-drawing it costs the page time on every click)."""
        try:
            image = app.render(state, session_of(request), alpha, radius, masks_only)
        except Exception as error:  # never a traceback in the UI; the state is kept
            image, message = None, f"⚠️ {error}"
        after = snapshot(state)
        masks_changed = before is not None and before[:2] != after[:2]
        instances_kept = before is not None and before[2:] == after[2:]
        instances = gr.skip() if instances_kept else instance_choices(state)
        return state, image, message, instances, None if masks_changed else gr.skip()

    def snapshot(state):
        return state.image_key, list(state.clicks), state.num_instances, min(state.selected, state.num_instances)

    with gr.Blocks(title="DynaMITe: multi-instance interactive segmentation", delete_cache=GRADIO_DELETE_CACHE) as demo:
        state = gr.State(SessionState())
        gr.Markdown(
            "## DynaMITe: click several objects, get all their masks\n"
            f"Model: **{app.model_label}**. Upload an image, click an object, **add instance** for the next one; "
            "turn on **background clicks** to mark what is not an object."
        )
        with gr.Row():
            with gr.Column(scale=3):
                # JPEG for the display: WebP (the default) takes ~0.4 s to encode a 2-MP overlay, JPEG ~25 ms.
                canvas = gr.Image(
                    label="Click to segment", interactive=False, type="numpy", format="jpeg", elem_id="canvas"
                )
                status = gr.Markdown("Upload an image or pick an example.", elem_id="status")
            with gr.Column(scale=1):
                # Any file type: the app answers a non-image with a message (a type filter drops it silently).
                upload = gr.File(label="Upload an image", type="filepath", elem_id="upload")
                gr.Examples(examples=examples, inputs=upload, label="Examples")
                instance = gr.Radio(label="Instance", choices=[("Instance 1 (new)", 0)], value=0, elem_id="instance")
                with gr.Row():
                    add_button = gr.Button("Add instance", elem_id="add-instance")
                    background = gr.Checkbox(label="Background clicks", value=False, elem_id="background")
                with gr.Row():
                    undo_button = gr.Button("Undo", elem_id="undo")
                    remove_button = gr.Button("Remove instance", elem_id="remove")
                    reset_button = gr.Button("Reset", elem_id="reset")
                masks_only = gr.Checkbox(label="Show masks only", value=False)
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Alpha")
                radius = gr.Slider(0, 10, value=3, step=1, label="Click radius")
                export_button = gr.Button("Export masks", elem_id="export")
                files = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")

        look = [alpha, radius, masks_only]
        outputs = [state, canvas, status, instance, files]

        def on_upload(state, source, alpha, radius, masks_only, request: gr.Request):
            if source is None:
                return state, gr.update(), "Upload an image or pick an example.", instance_choices(state), gr.skip()
            before = snapshot(state)
            state, message = app.load(state, source, session_of(request))
            return view(state, message, alpha, radius, masks_only, request, before)

        def on_select(state, background, alpha, radius, masks_only, event: gr.SelectData, request: gr.Request):
            col, row = event.index  # pixels of the overlay, which may be smaller or larger than the image
            if state.image is not None:
                row, col = state.image_point(row, col)
            before = snapshot(state)
            state, message = app.click(state, row, col, background, session_of(request))
            return view(state, message, alpha, radius, masks_only, request, before)

        def on_api_click(state, row, col, background, alpha, radius, masks_only, request: gr.Request):
            before = snapshot(state)
            state, message = app.click(state, row, col, bool(background), session_of(request))
            return view(state, message, alpha, radius, masks_only, request, before)

        def action(method):
            def handler(state, alpha, radius, masks_only, request: gr.Request):
                before = snapshot(state)
                state, message = method(state)
                return view(state, message, alpha, radius, masks_only, request, before)

            return handler

        def on_instance(state, value, alpha, radius, masks_only, request: gr.Request):
            state, message = app.select_instance(state, value if value is not None else 0)
            return view(state, message, alpha, radius, masks_only, request)

        def on_look(state, alpha, radius, masks_only, request: gr.Request):
            return view(state, gr.skip(), alpha, radius, masks_only, request)

        def on_export(state, request: gr.Request):
            paths, message = app.export(state, session_of(request))
            return paths or None, message

        upload.change(on_upload, [state, upload, *look], outputs, api_name="upload")
        # A click answers in about 0.1 s: a small spinner, not the full overlay that greys the image out and that
        # the page keeps animating (CPU the browser shares with the app on a small machine).
        canvas.select(on_select, [state, background, *look], outputs, api_name=False, show_progress="minimal")
        row_input, col_input = gr.Number(visible=False), gr.Number(visible=False)
        gr.Button(visible=False).click(
            on_api_click,
            [state, row_input, col_input, background, *look],
            outputs,
            api_name="click",
            show_progress="minimal",
        )
        add_button.click(action(app.add_instance), [state, *look], outputs, api_name="add_instance")
        undo_button.click(action(app.undo), [state, *look], outputs, api_name="undo")
        remove_button.click(action(app.remove_instance), [state, *look], outputs, api_name="remove_instance")
        reset_button.click(action(app.reset), [state, *look], outputs, api_name="reset")
        instance.input(on_instance, [state, instance, *look], outputs, api_name="select_instance")
        for control in look:
            control.change(on_look, [state, *look], outputs, api_name=False, show_progress="minimal")
        export_button.click(on_export, [state], [files, status], api_name="export")
    return demo
