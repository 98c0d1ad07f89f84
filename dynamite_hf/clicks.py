"""The click: one type used by the predictor, the evaluator, training and the app (the model takes tensors:
`clicks_to_inputs`, or `DynamiteProcessor` for clicks on the original image)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Frame = Literal["original", "model"]
FRAMES: tuple[str, ...] = ("original", "model")


@dataclass(frozen=True)
class Click:
    """One user click.

    Attributes:
        instance: 0-based index of the instance the click belongs to (a positive click), or `None` for a
            background (negative) click.
        row: y coordinate in pixels of `frame`, continuous (`row = 10.5` is the centre of pixel row 10;
            an integer pixel index is fine too).
        col: x coordinate in pixels of `frame`.
        timestamp: 0-based global click counter in the order the clicks were made (the original's
            convention); it feeds the temporal part of the click's positional encoding.
        frame: `"original"` for pixels of the image as the user has it, `"model"` for pixels of the resized
            image the model sees (before padding). The processor maps one to the other; the model only takes
            `"model"` clicks.
    """

    instance: int | None
    row: float
    col: float
    timestamp: int
    frame: Frame = "original"

    def __post_init__(self) -> None:
        if self.instance is not None and (not isinstance(self.instance, int) or self.instance < 0):
            raise ValueError(f"Click.instance must be a non-negative int or None, got {self.instance!r}")
        if self.frame not in FRAMES:
            raise ValueError(f"Click.frame must be one of {FRAMES}, got {self.frame!r}")
        if not isinstance(self.timestamp, int) or self.timestamp < 0:
            raise ValueError(f"Click.timestamp must be a non-negative int, got {self.timestamp!r}")

    @property
    def is_background(self) -> bool:
        return self.instance is None

    def rescaled(self, scale_row: float, scale_col: float, frame: Frame) -> Click:
        """This click with its coordinates multiplied by the scales and re-labelled as `frame`."""
        return replace(self, row=self.row * scale_row, col=self.col * scale_col, frame=frame)


def clicks_from_json(entries: Any, where: str = "clicks") -> list[Click]:
    """Clicks as JSON holds them (the batch command's clicks file, the app's stateless API): a list of
    `{"row": y, "col": x, "instance": k}` in the order they were made, `row`/`col` in pixels of the image, `instance`
    0-based or `null` for a background click. Timestamps follow the list's order.

    Raises:
        ValueError: naming `where` and the click, for anything else.
    """
    if not isinstance(entries, list):
        raise ValueError(
            f"{where} must be a list of clicks ({{'row': y, 'col': x, 'instance': k or null}}), got "
            f"{type(entries).__name__}"
        )
    clicks = []
    for number, entry in enumerate(entries):
        try:
            instance = entry["instance"]
            if isinstance(instance, bool):
                raise ValueError(f"instance must be an int or null, got {instance!r}")
            row, col = float(entry["row"]), float(entry["col"])
            if not (math.isfinite(row) and math.isfinite(col)):
                raise ValueError(f"row and col must be finite numbers, got row={entry['row']!r}, col={entry['col']!r}")
            clicks.append(Click(instance, row, col, number))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}[{number}] needs row, col and instance (int or null): {error}") from None
    return clicks


def without_instance(clicks: Sequence[Click], instance: int) -> list[Click]:
    """`clicks` without `instance`'s clicks: instances above it move down by one (k -> k - 1), timestamps are
    renumbered 0..n-1 in click order."""
    kept = [c for c in clicks if c.instance != instance]
    return [
        replace(
            c, instance=c.instance - 1 if c.instance is not None and c.instance > instance else c.instance, timestamp=t
        )
        for t, c in enumerate(kept)
    ]


def clicks_to_inputs(clicks: Sequence[Sequence[Click]]) -> dict[str, torch.Tensor]:
    """Per image, clicks already in the model's frame (pixels of the resized image) -> the model's click arguments:
    `input_points` `(batch, n, 2)` float64 `(x, y)`, `input_labels` `(batch, n)` (instance `k` -> label `k + 1`, a
    background click 0, padding -10) and `input_timestamps` `(batch, n)`. (`DynamiteProcessor` does the same for
    clicks in the original image's frame.)"""
    import torch

    length = max(len(image_clicks) for image_clicks in clicks)
    points = torch.zeros(len(clicks), length, 2, dtype=torch.float64)
    labels = torch.full((len(clicks), length), -10, dtype=torch.long)
    timestamps = torch.zeros(len(clicks), length, dtype=torch.long)
    for index, image_clicks in enumerate(clicks):
        for position, click in enumerate(image_clicks):
            points[index, position] = torch.tensor([click.col, click.row], dtype=torch.float64)
            labels[index, position] = 0 if click.instance is None else click.instance + 1
            timestamps[index, position] = click.timestamp
    return {"input_points": points, "input_labels": labels, "input_timestamps": timestamps}
