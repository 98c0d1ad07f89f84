"""What a browser session made: its images, each with its clicks, classes and undo history; and the bounded cache
of `DynamitePredictor`s (per-image features) that the sessions share.

The session is the source of truth: a predictor evicted from the cache is rebuilt from the image file and the
clicks, so nothing the user made is lost on an error or an eviction. Instances are numbered from 1 wherever a
person reads them (the screen, the label maps' values, the exported files, COCO); `Click.instance` stays 0-based.

Memory: a session holds only small things (names, clicks, classes; each image's undo history at most
`max_history_bytes`); its files (uploads, exact masks) are on disk; pixels, features and label maps live in the
shared `PredictorCache`, bounded in bytes.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..clicks import Click
from ..models.dynamite.modeling_dynamite import DynamiteModel
from ..models.dynamite.processing_dynamite import DynamiteProcessor
from ..predictor import DynamitePredictor
from .scheduler import INTERACTIVE_MAX_CLICKS, INTERACTIVE_MAX_INSTANCES, ComputeLanes
from .uploads import decode_upload, display_image, display_size

DEFAULT_CLASS = "object"
DEFAULT_MAX_SESSIONS = 8
# Bytes of cached image features (and label maps) across sessions: the CPU model's features of a 2-MP photo
# take about 46 MB, a converted Swin-L's at 800x1216 several hundred.
DEFAULT_MAX_CACHE_MB = 2048
# How long an action waits for the page's earlier actions to arrive before it goes ahead (see `turn`).
ORDER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Annotation:
    """One step of an image's undo history: its clicks (click order) and each instance's class name."""

    clicks: tuple[Click, ...] = ()
    classes: tuple[str, ...] = ()  # classes[k] names instance k (0-based; "Instance k + 1" on screen)

    @property
    def num_instances(self) -> int:
        return len(self.classes)

    def nbytes(self) -> int:
        """About what this step adds to a history: its two tuples and one new click (the clicks and class names
        before it are shared with the step before)."""
        return sys.getsizeof(self) + sys.getsizeof(self.clicks) + sys.getsizeof(self.classes) + _CLICK_NBYTES


_CLICK_NBYTES = sys.getsizeof(Click(0, 0.5, 0.5, 0)) + sys.getsizeof(Click(0, 0.5, 0.5, 0).__dict__) + 2 * 24


@dataclass
class ImageAnnotation:
    """One image of a session and what was made on it."""

    name: str  # the file name it was uploaded under: COCO's file_name
    source: Path  # the session's copy of the upload, decoded again when its predictor must be rebuilt
    size: tuple[int, int]  # (height, width) of the image the predictor works on (after any downscale)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # names it in the predictor cache and the page
    history: list[Annotation] = field(default_factory=lambda: [Annotation()])
    selected: int = 0  # the instance positive clicks go to (0-based); == num_instances means "a new one"
    # The exact label map at the image's size for an annotation, as a PNG beside the upload, computed when the user
    # moves to another image, so that exporting the dataset rarely re-runs the model.
    exact: tuple[Annotation, Path] | None = None
    # The undo history's bytes (`Annotation.nbytes`); the oldest steps go first past it (None: no limit).
    max_history_bytes: int | None = None
    history_trimmed: bool = False  # whether steps were dropped: undo stops short of the first one

    @property
    def annotation(self) -> Annotation:
        return self.history[-1]

    @property
    def clicks(self) -> list[Click]:
        return list(self.annotation.clicks)

    @property
    def num_instances(self) -> int:
        return self.annotation.num_instances

    @property
    def stem(self) -> str:
        """The name without its extension: the exported PNGs are named after it."""
        return Path(self.name).stem

    @property
    def exact_path(self) -> Path:
        """Where the exact label map is stored: beside the upload."""
        return self.source.with_name(f"{self.key}-exact.png")

    @property
    def overlay_size(self) -> tuple[int, int]:
        """`(height, width)` of the overlay (`uploads.display_size`)."""
        return display_size(*self.size)

    def pixels(self) -> np.ndarray:
        """The image as the predictor takes it, `(H, W, 3)` uint8 RGB, decoded again from the session's copy."""
        return decode_upload(self.source, self.name).pixels

    def push(self, annotation: Annotation) -> None:
        """A new step; the oldest go while the history holds more than `max_history_bytes` (the newest stays)."""
        self.history.append(annotation)
        self.selected = min(self.selected, annotation.num_instances)
        if self.max_history_bytes is not None:
            total = self.history_nbytes()
            while len(self.history) > 1 and total > self.max_history_bytes:
                total -= self.history.pop(0).nbytes()
                self.history_trimmed = True

    def history_nbytes(self) -> int:
        return sum(step.nbytes() for step in self.history)

    def image_point(self, display_row: float, display_col: float) -> tuple[float, float]:
        """Overlay coordinates (pixels, continuous: 10.5 is the centre of row 10) -> `(row, col)` in the image."""
        height, width = self.size
        display_height, display_width = self.overlay_size
        return display_row * height / display_height, display_col * width / display_width

    def display_clicks(self) -> list[Click]:
        """The clicks with their coordinates in the overlay's frame (for drawing)."""
        display_height, display_width = self.overlay_size
        scale_row, scale_col = display_height / self.size[0], display_width / self.size[1]
        return [replace(c, row=c.row * scale_row, col=c.col * scale_col) for c in self.clicks]

    @property
    def heavy(self) -> bool:
        """Whether its previews run in the background lane (`scheduler.INTERACTIVE_MAX_*`)."""
        annotation = self.annotation
        return annotation.num_instances > INTERACTIVE_MAX_INSTANCES or len(annotation.clicks) > INTERACTIVE_MAX_CLICKS


@dataclass
class Look:
    """How the overlay is drawn (not part of the annotation)."""

    alpha: float = 0.5
    radius: int = 5
    masks_only: bool = False


class AnnotationSession:
    """One browser session: its images in upload order, the one shown, the class list, the look.

    Every change happens under `lock`. Actions from the page carry a sequence number stamped in the page in the
    order the user made them; `turn` makes each wait for the earlier ones, so they apply in that order whatever
    order their requests reach the server in.
    """

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex
        self.folder: Path | None = None  # where the session's uploads are copied, made on the first upload
        self._remove_folder: weakref.finalize | None = None
        self.images: list[ImageAnnotation] = []
        self.current = 0
        self.classes: list[str] = [DEFAULT_CLASS]  # every class name used, in the order first named
        self.new_class = DEFAULT_CLASS  # the class new instances get
        self.look = Look()
        self.next_sequence = 1
        self.actions = 0  # requests seen (`DynamiteApp.remember`): whether a closed page came back
        self.session_hash: str | None = None  # Gradio's name for the browser session, from its first request
        self.lock = threading.Condition()

    def __deepcopy__(self, memo: dict) -> AnnotationSession:
        # `gr.State` deep-copies its initial value for every new browser session: a new, empty session (a lock
        # cannot be copied, and an empty session has nothing else).
        return AnnotationSession()

    @property
    def image(self) -> ImageAnnotation | None:
        """The image shown, or None before the first upload."""
        return self.images[self.current] if self.images else None

    def find(self, key: str) -> ImageAnnotation | None:
        return next((image for image in self.images if image.key == key), None)

    @contextlib.contextmanager
    def turn(self, first: int | None, last: int | None = None) -> Iterator[list[str]]:
        """Hold the session for the page's actions numbered `first` to `last` (default: `first`; None: an API
        call, served in arrival order), once the page's earlier actions have been applied. Yields a list that
        holds a warning when earlier actions never arrived within `ORDER_TIMEOUT_S` (then these go ahead)."""
        warnings: list[str] = []
        with self.lock:
            if first is not None:
                deadline = time.monotonic() + ORDER_TIMEOUT_S
                while first > self.next_sequence:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        warnings.append(
                            f"⚠️ {first - self.next_sequence} earlier action(s) from this page never reached the "
                            "server, so they were not applied; check the instances and redo them if needed."
                        )
                        break
                    self.lock.wait(remaining)
            try:
                yield warnings
            finally:
                if first is not None:
                    self.next_sequence = max(self.next_sequence, (first if last is None else last) + 1)
                    self.lock.notify_all()

    def make_folder(self, root: Path) -> Path:
        """The session's folder under `root`, made on first use; removed with the session, however it goes (Gradio
        drops the state of sessions past its capacity without calling back)."""
        if self.folder is None:
            self.folder = root / self.uid
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        return self.folder

    def remove_files(self) -> None:
        if self._remove_folder is not None:
            self._remove_folder()

    def nbytes(self) -> int:
        """About the bytes of the session's histories (everything else it holds is small or on disk)."""
        return sum(image.history_nbytes() for image in self.images)


@dataclass
class _CachedImage:
    predictor: DynamitePredictor
    display: np.ndarray  # the image at the overlay's size, (h, w, 3) uint8
    # The last label map per output size (overlay, export) with the clicks it is for: redrawing after a look
    # change, or exporting twice, costs no prediction. Two sizes at most, so memory stays bounded.
    results: dict[tuple[int, int] | None, tuple[tuple[Click, ...], np.ndarray]] = field(default_factory=dict)

    def nbytes(self) -> int:
        results = sum(label_map.nbytes for _, label_map in self.results.values())
        return self.predictor.nbytes() + self.display.nbytes + results


class PredictorCache:
    """At most `max_images` predictors (cached image features, overlay-size pixels, last label maps) holding at most
    `max_bytes` together, least recently used evicted first. The image being served is always kept, even alone over
    `max_bytes`. Computations run in `lanes` (`scheduler`): previews of small annotations whose features are cached
    in the interactive lane, everything else in the background lane."""

    def __init__(
        self,
        model: DynamiteModel,
        processor: DynamiteProcessor,
        max_images: int,
        max_bytes: int = DEFAULT_MAX_CACHE_MB * 2**20,
        lanes: ComputeLanes | None = None,
        max_instances: int | None = None,
        max_clicks: int | None = None,
    ) -> None:
        for name, value in (("max_images", max_images), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        self.model, self.processor = model, processor
        self.max_images, self.max_bytes = max_images, max_bytes
        self.lanes = lanes if lanes is not None else ComputeLanes()
        self.predictor_limits = {"max_instances": max_instances, "max_clicks": max_clicks, "max_history_mb": None}
        self._images: OrderedDict[str, _CachedImage] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, key: str) -> bool:
        return key in self._images

    def nbytes(self) -> int:
        """Bytes held by the cached images' features and label maps."""
        with self._lock:
            return sum(entry.nbytes() for entry in self._images.values())

    def overlay(
        self, image: ImageAnnotation, owner: str = "", pixels: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(display, label_map)`: `image` at the overlay's size and its clicks' preview label map at that size
        (`DynamitePredictor.preview_label_map`), computed for `owner` (the session, for the lanes' fairness).
        `pixels` (the decoded image) saves decoding the file again when the features must be computed."""
        entry, label_map = self._compute(image, image.overlay_size, owner, pixels)
        return entry.display, label_map

    def label_map(self, image: ImageAnnotation, owner: str = "", pixels: np.ndarray | None = None) -> np.ndarray:
        """The exact label map of `image`'s clicks at the image's size, computed in the background lane."""
        return self._compute(image, None, owner, pixels)[1]

    def _compute(
        self, image: ImageAnnotation, size: tuple[int, int] | None, owner: str, pixels: np.ndarray | None
    ) -> tuple[_CachedImage, np.ndarray]:
        with self._lock:
            entry = self._images.pop(image.key, None)
        clicks = tuple(image.clicks)
        result = entry.results.get(size) if entry is not None else None
        if result is None or result[0] != clicks:

            def compute() -> tuple[_CachedImage, tuple[tuple[Click, ...], np.ndarray]]:
                cached = entry
                if cached is None:
                    decoded = image.pixels() if pixels is None else pixels
                    predictor = DynamitePredictor(self.model, self.processor, **self.predictor_limits)
                    predictor.set_image(decoded)
                    cached = _CachedImage(predictor, display_image(decoded))
                if size is None:
                    return cached, (clicks, cached.predictor.label_map_of(list(clicks)))
                return cached, (clicks, cached.predictor.preview_label_map(list(clicks), size))

            background = entry is None or size is None or image.heavy
            entry, result = self.lanes.run(owner, compute, background=background)
            entry.results[size] = result
        with self._lock:
            self._images[image.key] = entry
            sizes = {key: cached.nbytes() for key, cached in self._images.items()}
            total = sum(sizes.values())
            while len(self._images) > 1 and (len(self._images) > self.max_images or total > self.max_bytes):
                evicted, _ = self._images.popitem(last=False)
                total -= sizes[evicted]
        return entry, result[1]

    def discard(self, keys: set[str]) -> None:
        """Drop the predictors of these images (a session that went away)."""
        with self._lock:
            dropped = [self._images.pop(key, None) for key in keys]
        if any(entry is not None for entry in dropped):
            self.lanes.memory_freed()
