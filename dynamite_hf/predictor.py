"""`DynamitePredictor`: the stateful session over the stateless model (one image, its clicks, undo).

    predictor = DynamitePredictor.from_pretrained("models/dynamite-mobilenet-v2")
    predictor.set_image("photo.jpg")          # backbone + pixel decoder, once
    predictor.add_click(120, 300)             # new instance 0 (row, col in the photo's pixels)
    predictor.add_click(400, 80, instance=1)  # new instance 1
    predictor.add_background_click(10, 10)
    masks = predictor.masks                   # (2, H, W) bool, non-overlapping

Coordinates are `row, col` (y, x) in pixels of the image as given to `set_image`. Timestamps follow the
original's convention: the global click counter from 0, in click order, over the clicks currently in the
session (an undone click frees its timestamp; removing an instance renumbers the remaining clicks 0..n-1 in
the order they were made). The architecture takes no mask input, so there is no `initial_masks`: a session
always starts from clicks.

Limits (arguments of `DynamitePredictor`, `None` for none): at most `max_instances` instances and `max_clicks` clicks
per image, refused where the clicks enter with the session unchanged; and at most `max_history_mb` of label maps in
the undo history (older steps keep their clicks and are predicted again on undo).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .clicks import Click, without_instance
from .inference import BACKENDS, select_backend
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor, ImageLike, load_image
from .models.dynamite.modeling_dynamite import DynamiteImageEmbeddings, DynamiteModel
from .models.dynamite.processing_dynamite import DynamiteProcessor
from .models.dynamite.refinement import BoundaryRefiner

logger = logging.getLogger(__name__)

# Per-image limits. The model was trained on at most 30 instances per image (the original's data mapper keeps
# min(0.7 n, 30) of an image's objects); the paper's multi-instance protocol gives each instance 10 clicks, and
# 10 x 30 = 300 clicks stays under the temporal normaliser (`temporal_norm`, 500), below which every click's time
# is encoded as in training (past it, every timestamp is divided by the largest instead). A click at these limits
# takes about 2 s (one thread) and its exact masks for a 2048 x 1536 image about 2 GB at peak (docs/app.md "Limits").
DEFAULT_MAX_INSTANCES = 30
DEFAULT_MAX_CLICKS = 300
# Label maps kept by the undo history: 20 steps of a 2048 x 1536 image (int32).
DEFAULT_MAX_HISTORY_MB = 256


@dataclass(frozen=True)
class _State:
    clicks: tuple[Click, ...]
    label_map: np.ndarray | None  # (H, W) int32, 0 = background, k + 1 = instance k; None: dropped, predicted again


def load_processor(path: str | os.PathLike) -> DynamiteProcessor:
    """The processor saved in `path` (a folder or Hub id; `preprocessor_config.json`). A local folder without one
    gets the original's test-time settings, with a warning that names the file."""
    if Path(path).is_dir() and not (Path(path) / "preprocessor_config.json").is_file():
        logger.warning(
            "%s has no preprocessor_config.json: using the original's test-time settings (shortest edge 800, "
            "longest 1333, no boundary refinement); save the processor beside the model to choose them",
            path,
        )
        return DynamiteProcessor(DynamiteImageProcessor())
    return DynamiteProcessor(DynamiteImageProcessor.from_pretrained(path))


def default_processor(model) -> DynamiteProcessor:
    """The processor saved beside `model` (its `name_or_path`, or an ONNX export's folder), else the original's
    test-time settings."""
    folder = getattr(model, "name_or_path", None) or getattr(model, "directory", None)
    return load_processor(folder) if folder else DynamiteProcessor(DynamiteImageProcessor())


class DynamitePredictor:
    """Interactive multi-instance segmentation of one image at a time.

    Args:
        model: a `DynamiteModel`, or an `OnnxDynamiteModel` (`dynamite_hf.inference.onnx`).
        processor: the matching `DynamiteProcessor` (or its `DynamiteImageProcessor`). Default: the one saved beside
            the model (`preprocessor_config.json` in the folder it was loaded from), else the original's settings.
        backend: how the model runs (`dynamite_hf.inference`): `"auto"` (the CPU click decoder for a float32 model on
            the CPU, the model itself otherwise), `"eager"` (the model itself), `"cpu"` or `"onnx"`.
        refine_boundaries: snap the mask boundaries to the image's edges with the processor's guided filter
            (`guided_filter_radius`). Default: on when the processor's radius is positive (the bundled CPU model),
            off otherwise (the released models, whose masks are then the original's). `True` needs a positive radius.
        max_instances: instances one image may hold (default 30: the most the model was trained with); more are
            refused with a `ValueError`. `None`: no limit.
        max_clicks: clicks one image may hold (default 300: 10 per instance, under the temporal normaliser of 500);
            more are refused with a `ValueError`. `None`: no limit.
        max_history_mb: megabytes of label maps the undo history keeps (default 256); the oldest steps' label maps are
            dropped first and predicted again from their clicks on undo. `None`: keep every one.
    """

    def __init__(
        self,
        model,
        processor: DynamiteProcessor | DynamiteImageProcessor | None = None,
        backend: str = "auto",
        refine_boundaries: bool | None = None,
        max_instances: int | None = DEFAULT_MAX_INSTANCES,
        max_clicks: int | None = DEFAULT_MAX_CLICKS,
        max_history_mb: float | None = DEFAULT_MAX_HISTORY_MB,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if processor is None:
            processor = default_processor(model)
        elif isinstance(processor, DynamiteImageProcessor):
            processor = DynamiteProcessor(processor)
        elif not isinstance(processor, DynamiteProcessor):
            raise TypeError(f"processor must be a DynamiteProcessor or DynamiteImageProcessor, got {type(processor)}")
        radius = processor.image_processor.guided_filter_radius
        if refine_boundaries not in (None, True, False):
            raise ValueError(f"refine_boundaries must be None, True or False, got {refine_boundaries!r}")
        if refine_boundaries and radius <= 0:
            raise ValueError(
                "refine_boundaries=True needs a positive guided_filter_radius in the image processor "
                f"(preprocessor_config.json), which has {radius!r} (e.g. processor.image_processor."
                "guided_filter_radius = 8)"
            )
        for name, value in (("max_instances", max_instances), ("max_clicks", max_clicks)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (no limit), got {value!r}")
        if max_history_mb is not None and (isinstance(max_history_mb, bool) or not max_history_mb > 0):
            raise ValueError(f"max_history_mb must be a positive number of megabytes or None, got {max_history_mb!r}")
        self.max_instances, self.max_clicks, self.max_history_mb = max_instances, max_clicks, max_history_mb
        self.model = model
        self.backend = select_backend(model, backend)
        self.processor = processor
        self.refine_boundaries = radius > 0 if refine_boundaries is None else refine_boundaries
        self._embeddings: DynamiteImageEmbeddings | None = None
        self._image: np.ndarray | None = None
        self._sizes: tuple[torch.Tensor, torch.Tensor] | None = None  # original and reshaped input sizes (1, 2)
        self._refiner: BoundaryRefiner | None = None
        self._history: list[_State] = []

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        refine_boundaries: bool | None = None,
        max_instances: int | None = DEFAULT_MAX_INSTANCES,
        max_clicks: int | None = DEFAULT_MAX_CLICKS,
        max_history_mb: float | None = DEFAULT_MAX_HISTORY_MB,
        **kwargs,
    ) -> DynamitePredictor:
        """The model and processor saved in `path` (a folder or Hub id); `kwargs` go to `from_pretrained`."""
        model = DynamiteModel.from_pretrained(path, **kwargs)
        limits = {"max_instances": max_instances, "max_clicks": max_clicks, "max_history_mb": max_history_mb}
        return cls(model, load_processor(path), backend=backend, refine_boundaries=refine_boundaries, **limits)

    # -- image --------------------------------------------------------------------------------------------
    def set_image(self, image: ImageLike) -> None:
        """Load `image` (path, PIL or HxWxC uint8 RGB array), run the per-image stage once, clear the clicks.

        On a bad image (unreadable or oversized) the previous image and clicks stay as they were. Once the image
        is known to be good, the previous one's features are released before the new ones are computed, so two
        images' features never coexist (334 MB each for a paper preset at 800x1216).
        """
        image_processor = self.processor.image_processor
        loaded = load_image(image, image_processor.max_image_pixels)
        inputs = image_processor.preprocess(loaded)
        self._embeddings, self._image, self._sizes, self._refiner, self._history = None, None, None, None, []
        with torch.inference_mode():
            embeddings = self.backend.get_image_embeddings(inputs["pixel_values"].to(self.backend.device))
        self._image = loaded
        self._sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
        self._embeddings = embeddings
        if self.refine_boundaries:
            self._refiner = image_processor.boundary_refiner(loaded, tuple(inputs["reshaped_input_sizes"][0].tolist()))
        self._history = [_State((), np.zeros(loaded.shape[:2], dtype=np.int32))]

    @property
    def image(self) -> np.ndarray:
        """The current image, `(H, W, 3)` uint8 RGB."""
        self._require_image()
        return self._image

    @property
    def image_embeddings(self) -> DynamiteImageEmbeddings:
        """The current image's features, as the backend computed them."""
        self._require_image()
        return self._embeddings

    def nbytes(self) -> int:
        """Bytes this predictor holds: the image, its cached features, the label maps of the undo history and the
        boundary refinement's per-image tensors."""
        if self._embeddings is None:
            return 0
        history = self._history_nbytes()
        refinement = self._refiner.nbytes() if self._refiner is not None else 0
        return self._image.nbytes + self._embeddings.nbytes() + history + refinement

    # -- clicks -------------------------------------------------------------------------------------------
    @property
    def clicks(self) -> list[Click]:
        """The session's clicks in click order (original frame)."""
        return list(self._state.clicks) if self._history else []

    @property
    def num_instances(self) -> int:
        return 1 + max((c.instance for c in self.clicks if c.instance is not None), default=-1)

    def add_click(self, row: float, col: float, instance: int | None = None) -> np.ndarray:
        """A positive click on `instance` (default: a new instance, numbered `num_instances`).

        Returns the new masks `(num_instances, H, W)` bool.
        """
        if instance is None:
            instance = self.num_instances
        if not isinstance(instance, (int, np.integer)) or not 0 <= instance <= self.num_instances:
            raise ValueError(
                f"instance must be an existing instance (0..{self.num_instances - 1}) or {self.num_instances} "
                f"for a new one, got {instance!r}"
            )
        return self._push(Click(int(instance), float(row), float(col), len(self.clicks)))

    def add_background_click(self, row: float, col: float) -> np.ndarray:
        """A negative click. Before any positive click it is kept and used once an instance exists."""
        return self._push(Click(None, float(row), float(col), len(self.clicks)))

    def set_clicks(self, clicks: list[Click]) -> np.ndarray:
        """Replace the session's clicks by `clicks` (original frame, in click order) with one prediction.

        Timestamps are renumbered 0..n-1 in the given order; instances must be numbered 0..N-1. Undoable.
        """
        renumbered = self._checked_clicks(clicks)
        self._record(_State(tuple(renumbered), self._predict(renumbered)))
        return self.masks

    def label_map_of(self, clicks: list[Click], output_size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map `clicks` give (as `set_clicks` would), at `output_size` `(height, width)` (default: the
        image's size), leaving the session's clicks and undo history as they are. Returns `(H, W)` int32."""
        return self._predict(self._checked_clicks(clicks), output_size)

    def preview_label_map(self, clicks: list[Click], output_size: tuple[int, int]) -> np.ndarray:
        """A label map of `clicks` at `output_size` for drawing, about twice as fast as `label_map_of` at display
        size (`post_process_masks(..., preview=True)`: the queries fused per instance before the resize). It differs
        from `label_map_of` at a few boundary pixels; export with `label_map_of`. Returns `(H, W)` int32."""
        return self._predict(self._checked_clicks(clicks), output_size, preview=True)

    def undo(self, steps: int = 1) -> np.ndarray:
        """Go back `steps` clicks (or removals), to the earlier masks (a step whose label map the history dropped,
        past `max_history_mb`, is predicted again from its clicks: the same computation on the same features)."""
        self._require_image()
        if not isinstance(steps, int) or not 1 <= steps <= len(self._history) - 1:
            raise ValueError(
                f"steps must be between 1 and {len(self._history) - 1} (the undoable actions), got {steps!r}"
            )
        del self._history[-steps:]
        return self.masks

    def remove_instance(self, instance: int) -> np.ndarray:
        """Drop `instance` and its clicks; instances above it move down by one (k -> k - 1). Undoable."""
        self._require_image()
        if not isinstance(instance, (int, np.integer)) or not 0 <= instance < self.num_instances:
            raise ValueError(f"instance must be in 0..{self.num_instances - 1}, got {instance!r}")
        renumbered = without_instance(self.clicks, instance)
        self._record(_State(tuple(renumbered), self._predict(renumbered)))
        return self.masks

    def reset(self) -> None:
        """Forget all clicks (and the undo history); the image features stay cached."""
        self._require_image()
        self._history = self._history[:1]

    # -- results ------------------------------------------------------------------------------------------
    @property
    def label_map(self) -> np.ndarray:
        """`(H, W)` int32 at the original resolution: 0 = background, k + 1 = instance k."""
        self._require_image()
        state = self._state
        if state.label_map is None:  # dropped from the undo history to keep it within max_history_mb
            self._history[-1] = state = replace(state, label_map=self._predict(list(state.clicks)))
            self._trim_history()
        return state.label_map

    @property
    def masks(self) -> np.ndarray:
        """`(num_instances, H, W)` bool at the original resolution, non-overlapping."""
        label_map = self.label_map
        return label_map[None] == np.arange(1, self.num_instances + 1, dtype=np.int32)[:, None, None]

    # -- internals ----------------------------------------------------------------------------------------
    @property
    def _state(self) -> _State:
        return self._history[-1]

    def _require_image(self) -> None:
        if self._embeddings is None:
            raise RuntimeError("No image: call set_image(image) before clicking")

    def _checked_clicks(self, clicks: list[Click]) -> list[Click]:
        """`clicks` with timestamps renumbered 0..n-1, checked: within the limits, instances 0..N-1, every click
        inside the image."""
        self._require_image()
        height, width = self._image.shape[:2]
        if self.max_clicks is not None and len(clicks) > self.max_clicks:
            raise ValueError(
                f"clicks: {len(clicks)} clicks on one image, more than this predictor's max_clicks={self.max_clicks} "
                "(10 per instance; past the model's temporal normaliser, 500, every click's time encoding changes); "
                "pass DynamitePredictor(..., max_clicks=N) for another limit, or None for none"
            )
        renumbered = [replace(c, timestamp=t, frame="original") for t, c in enumerate(clicks)]
        instances = sorted({c.instance for c in renumbered if c.instance is not None})
        if self.max_instances is not None and len(instances) > self.max_instances:
            raise ValueError(
                f"clicks: {len(instances)} instances on one image, more than this predictor's max_instances="
                f"{self.max_instances} (the most the model was trained with is 30); pass DynamitePredictor(..., "
                "max_instances=N) for another limit, or None for none"
            )
        if instances != list(range(len(instances))):
            raise ValueError(f"clicks must number their instances 0..N-1, got instances {instances}")
        for click in renumbered:
            if not (0 <= click.row < height and 0 <= click.col < width):
                raise ValueError(
                    f"click at (row={click.row}, col={click.col}) lies outside the image of {height}x{width} pixels"
                )
        return renumbered

    def _push(self, click: Click) -> np.ndarray:
        clicks = self._checked_clicks([*self.clicks, click])
        self._record(_State(tuple(clicks), self._predict(clicks)))
        return self.masks

    def _record(self, state: _State) -> None:
        self._history.append(state)
        self._trim_history()

    def _history_nbytes(self) -> int:
        return sum(state.label_map.nbytes for state in self._history if state.label_map is not None)

    def _trim_history(self) -> None:
        """Drop the oldest label maps until the history holds at most `max_history_mb` (the current one stays)."""
        if self.max_history_mb is None:
            return
        excess = self._history_nbytes() - self.max_history_mb * 2**20
        for index, state in enumerate(self._history[:-1]):
            if excess <= 0:
                break
            if state.label_map is not None:
                excess -= state.label_map.nbytes
                self._history[index] = replace(state, label_map=None)

    def _predict(
        self, clicks: list[Click], output_size: tuple[int, int] | None = None, preview: bool = False
    ) -> np.ndarray:
        """The label map `(H, W)` int32 of checked clicks at `output_size` (default: the image's size)."""
        original_sizes, reshaped_input_sizes = self._sizes
        output_size = tuple(self._image.shape[:2]) if output_size is None else tuple(output_size)
        if not any(c.instance is not None for c in clicks):
            return np.zeros(output_size, dtype=np.int32)
        inputs = self.processor(
            input_points=[[[c.col, c.row] for c in clicks]],
            input_labels=[[0 if c.instance is None else c.instance + 1 for c in clicks]],
            input_timestamps=[[c.timestamp for c in clicks]],
            original_sizes=original_sizes,
            reshaped_input_sizes=reshaped_input_sizes,
        )
        with torch.inference_mode():
            outputs = self.backend(
                image_embeddings=self._embeddings,
                input_points=inputs["input_points"],
                input_labels=inputs["input_labels"],
                input_timestamps=inputs["input_timestamps"],
                reshaped_input_sizes=reshaped_input_sizes,
            )
            result = self.processor.post_process_masks(
                outputs.pred_masks,
                outputs.query_labels,
                original_sizes,
                reshaped_input_sizes,
                output_sizes=[output_size],
                refine_boundaries=self.refine_boundaries,
                refiners=[self._refiner] if self._refiner is not None else None,
                preview=preview,
                return_masks=False,
                return_scores=False,
            )[0]
        return result["label_map"].to(torch.int32).cpu().numpy()
