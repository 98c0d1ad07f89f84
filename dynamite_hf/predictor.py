"""`DynamitePredictor`: the stateful session over the stateless model (one image, its clicks, undo).

    predictor = DynamitePredictor(DynamiteModel.from_pretrained(path))
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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .clicks import Click, without_instance
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor, ImageLike, load_image
from .models.dynamite.modeling_dynamite import (
    DynamiteImageFeatures,
    DynamiteModel,
    label_instances,
)
from .models.dynamite.refinement import GuidedFilter, half_radius, half_size, image_to_guide


@dataclass(frozen=True)
class _State:
    clicks: tuple[Click, ...]
    label_map: np.ndarray  # (H, W) int32, 0 = background, k + 1 = instance k


class DynamitePredictor:
    """Interactive multi-instance segmentation of one image at a time.

    Args:
        model: a `DynamiteModel` (put in eval mode here), or an `OnnxDynamiteModel` (`dynamite_hf.inference.onnx`).
        processor: the matching `DynamiteImageProcessor` (default: built from the model's config).
        refine_boundaries: snap the mask boundaries to the image's edges with the guided filter of the model's
            config (`guided_filter_radius` etc., `dynamite_hf.refinement`). Default: on when the config's radius
            is positive (the bundled CPU model), off otherwise (the released models, whose masks are then the
            original's). `False` turns it off; `True` needs a positive radius in the config.
    """

    def __init__(
        self,
        model: DynamiteModel,
        processor: DynamiteImageProcessor | None = None,
        refine_boundaries: bool | None = None,
    ) -> None:
        radius = getattr(model.config, "guided_filter_radius", 0)
        if refine_boundaries not in (None, True, False):
            raise ValueError(f"refine_boundaries must be None, True or False, got {refine_boundaries!r}")
        if refine_boundaries and radius <= 0:
            raise ValueError(
                "refine_boundaries=True needs a positive guided_filter_radius in the model's config, which has "
                f"{radius!r} (set model.config.guided_filter_radius, e.g. 8)"
            )
        self.model = model.eval()
        self.processor = processor or DynamiteImageProcessor.from_config(model.config)
        self.refine_boundaries = radius > 0 if refine_boundaries is None else refine_boundaries
        self._features: DynamiteImageFeatures | None = None
        self._image: np.ndarray | None = None
        self._image_size: tuple[int, int] | None = None
        self._history: list[_State] = []
        self._guided_filter: GuidedFilter | None = None  # of the current image, built on its first click
        self._preview_filter: GuidedFilter | None = None  # the same at half the working size, for previews
        self._working_guide: torch.Tensor | None = None  # the image at the working size, as the filters' guide
        self._output_guide: tuple[tuple[int, int], torch.Tensor] | None = None  # the image at the last output size

    # -- image --------------------------------------------------------------------------------------------
    def set_image(self, image: ImageLike) -> None:
        """Load `image` (path, PIL or HxWxC uint8 RGB array), run the per-image stage once, clear the clicks.

        On a bad image (unreadable or oversized) the previous image and clicks stay as they were. Once the image
        is known to be good, the previous one's features are released before the new ones are computed, so two
        images' features never coexist (334 MB each for a paper preset at 800x1216).
        """
        loaded = load_image(image, self.processor.max_image_pixels)
        inputs = self.processor.preprocess(loaded)
        device = self.model.device
        self._features, self._image, self._image_size, self._history = None, None, None, []
        self._guided_filter, self._preview_filter, self._working_guide, self._output_guide = None, None, None, None
        with torch.inference_mode():
            features = self.model.get_image_features(inputs["pixel_values"].to(device))
        self._image = loaded
        self._image_size = tuple(inputs["image_sizes"][0].tolist())
        self._features = features
        self._history = [_State((), np.zeros(loaded.shape[:2], dtype=np.int32))]

    @property
    def image(self) -> np.ndarray:
        """The current image, `(H, W, 3)` uint8 RGB."""
        self._require_image()
        return self._image

    @property
    def image_features(self) -> DynamiteImageFeatures:
        self._require_image()
        return self._features

    def nbytes(self) -> int:
        """Bytes this predictor holds: the image, its cached features, the label maps of the undo history and the
        guided filter's per-image tensors."""
        if self._features is None:
            return 0
        history = sum(state.label_map.nbytes for state in self._history)
        tensors = [self._working_guide, self._output_guide[1] if self._output_guide is not None else None]
        for guided_filter in (self._guided_filter, self._preview_filter):
            if guided_filter is not None:
                tensors += [guided_filter.guide, guided_filter.mean, guided_filter.inverse]
        refinement = sum(t.nbytes for t in {id(t): t for t in tensors if t is not None}.values())
        return self._image.nbytes + self._features.nbytes() + history + refinement

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
        self._history.append(_State(tuple(renumbered), self._predict(renumbered)))
        return self.masks

    def label_map_of(self, clicks: list[Click], output_size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map `clicks` give (as `set_clicks` would), at `output_size` `(height, width)` (default: the
        image's size), leaving the session's clicks and undo history as they are.

        The app asks for the image's size (the masks it exports) only on export, and draws with
        `preview_label_map`. Returns `(H, W)` int32.
        """
        return self._predict(self._checked_clicks(clicks), output_size)

    def preview_label_map(self, clicks: list[Click], output_size: tuple[int, int]) -> np.ndarray:
        """A label map of `clicks` at `output_size` for drawing, about twice as fast as `label_map_of` at display
        size: the queries are grouped into each instance's and the background's logits at the model's working
        size, and only those `num_instances + 1` maps are resized (not one per query). It differs from
        `label_map_of` at a few boundary pixels per million; export with `label_map_of`. Returns `(H, W)` int32.
        """
        clicks = self._checked_clicks(clicks)
        if not any(c.instance is not None for c in clicks):
            return np.zeros(output_size, dtype=np.int32)
        if self.refine_boundaries:
            return self._refined_label_map(clicks, tuple(output_size), preview=True)
        with torch.inference_mode():
            scores, num_instances = self._grouped_logits(clicks)
            resized = F.interpolate(scores[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
            # One map per instance, the last (if any) the background's: the usual fusion rule.
            background = resized[num_instances] if resized.shape[0] > num_instances else None
            label_map = label_instances(resized[:num_instances], background, dtype=torch.int32)
        return label_map.cpu().numpy()

    def _grouped_logits(self, clicks: list[Click], half: bool = False) -> tuple[torch.Tensor, int]:
        """Each instance's logits, then the background's (if any query is background), at the working size
        (or at `half_size` of it with `half`): `(num_instances [+ 1], h, w)`, and `num_instances`. Call under
        `torch.inference_mode()`."""
        model_clicks = self.processor.clicks_to_model_frame(clicks, self._image.shape[:2], self._image_size)
        features = self._features
        query_logits, _, counts = self.model.query_logits(features, [model_clicks], [self._image_size])
        padded_size, image_size = features.padded_size, self._image_size
        if half:  # upsampled 2x (not 4x) from stride 4 and cropped at half the working size: a quarter of the pixels
            padded_size, image_size = half_size(padded_size), half_size(image_size)
        grouped = self.model.grouped_output_logits(query_logits[0], counts[0], padded_size, image_size, image_size)
        return grouped, len(counts[0])

    def undo(self, steps: int = 1) -> np.ndarray:
        """Go back `steps` clicks (or removals), to exactly the earlier masks."""
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
        self._history.append(_State(tuple(renumbered), self._predict(renumbered)))
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
        return self._state.label_map

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
        if self._features is None:
            raise RuntimeError("No image: call set_image(image) before clicking")

    def _checked_clicks(self, clicks: list[Click]) -> list[Click]:
        """`clicks` with timestamps renumbered 0..n-1, checked: instances 0..N-1, every click inside the image."""
        self._require_image()
        height, width = self._image.shape[:2]
        renumbered = [replace(c, timestamp=t, frame="original") for t, c in enumerate(clicks)]
        instances = sorted({c.instance for c in renumbered if c.instance is not None})
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
        self._history.append(_State(tuple(clicks), self._predict(clicks)))
        return self.masks

    def _predict(self, clicks: list[Click], output_size: tuple[int, int] | None = None) -> np.ndarray:
        original_size = self._image.shape[:2]
        output_size = original_size if output_size is None else tuple(output_size)
        if not any(c.instance is not None for c in clicks):
            return np.zeros(output_size, dtype=np.int32)
        if self.refine_boundaries:
            return self._refined_label_map(clicks, output_size)
        model_clicks = self.processor.clicks_to_model_frame(clicks, original_size, self._image_size)
        with torch.inference_mode():
            output = self.model(
                image_features=self._features,
                clicks=[model_clicks],
                image_sizes=[self._image_size],
                output_sizes=[output_size],
            )
        return output.label_maps[0].cpu().numpy().astype(np.int32)

    def _refined_label_map(
        self, clicks: list[Click], output_size: tuple[int, int], preview: bool = False
    ) -> np.ndarray:
        """The label map at `output_size` with the guided filter: the softmax over `[instances..., background]`
        of the grouped logits at the working size, each instance's probability filtered with the image as the
        guide (the background's is 1 minus their sum: the filter keeps sums), then the largest (ties to the
        lower instance, an instance before the background).

        The filter's coefficients are applied to the image at `output_size`. A `preview` takes the probabilities
        at half the working size (the stride-4 logits upsampled 2x, not 4x: a quarter of the pixels to resize
        and group), fits the filter there (half the radius) and applies it to the image at the working size, then
        resizes the filtered probabilities: He and Sun's "fast guided filter" one step further. On the app's
        benchmark clicks (up to six instances over a 1200x1600 photo) the half-size logits made a preview 1.37x
        faster; its boundaries differ from the exact path's by about a pixel of the working size."""
        config = self.model.config
        with torch.inference_mode():
            scores, num_instances = self._grouped_logits(clicks, half=preview)
            probabilities = torch.softmax(scores.float() / config.guided_filter_temperature, dim=0)[:num_instances]
            if preview:
                refined = self._half_size_filter()(probabilities, self._guide_working_size())
            else:
                if self._guided_filter is None:
                    self._guided_filter = GuidedFilter(
                        self._guide_working_size(), config.guided_filter_radius, config.guided_filter_eps
                    )
                refined = self._guided_filter(probabilities, self._guide_at(output_size))
            if refined.shape[1:] != tuple(output_size):
                refined = F.interpolate(refined[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
            # The background's probability is 1 minus the instances' (resizing is linear, so resized or not is
            # the same up to rounding); then the fusion rule over one map per instance and the background's.
            label_map = label_instances(refined, 1.0 - refined.sum(0), dtype=torch.int32)
        return label_map.numpy()

    def _guide_working_size(self) -> torch.Tensor:
        if self._working_guide is None:
            self._working_guide = image_to_guide(self._image, self._image_size)
        return self._working_guide

    def _half_size_filter(self) -> GuidedFilter:
        """The previews' guided filter: at half the working size, with half the radius (at least 1)."""
        if self._preview_filter is None:
            config = self.model.config
            guide = image_to_guide(self._image, half_size(self._image_size))
            self._preview_filter = GuidedFilter(
                guide, half_radius(config.guided_filter_radius), config.guided_filter_eps
            )
        return self._preview_filter

    def _guide_at(self, output_size: tuple[int, int]) -> torch.Tensor:
        """The image at `output_size` as the guided filter's guide, kept for the next click at the same size."""
        if self._output_guide is None or self._output_guide[0] != output_size:
            self._output_guide = (output_size, image_to_guide(self._image, output_size))
        return self._output_guide[1]
