"""The click: one type used by the model, the processor, the predictor, the evaluator, training and the app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

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


def check_clicks_inside(clicks: Sequence[Click], height: int, width: int, argument: str = "clicks") -> None:
    """Raise `ValueError` naming `argument` if a click lies outside a `height x width` image."""
    for index, click in enumerate(clicks):
        if not (0 <= click.row < height and 0 <= click.col < width):
            raise ValueError(
                f"{argument}[{index}] at (row={click.row}, col={click.col}) lies outside the image of "
                f"{height}x{width} pixels (rows 0..{height}, cols 0..{width}, {click.frame} frame)"
            )


def order_clicks(clicks: Sequence[Click], argument: str = "clicks") -> tuple[list[Click], list[int]]:
    """Put clicks in query order and count them per instance.

    Query order (the original's): instance 0's clicks, instance 1's clicks, ..., then the background clicks,
    each group in the order given. Instances must be numbered 0..N-1 and each must have at least one click.

    Returns:
        The ordered clicks and `num_clicks_per_instance` (length N).
    """
    if len(clicks) == 0:
        raise ValueError(f"{argument} is empty: at least one positive click is needed")
    instances = sorted({c.instance for c in clicks if c.instance is not None})
    if not instances:
        raise ValueError(f"{argument} holds only background clicks: at least one positive click is needed")
    missing = sorted(set(range(instances[-1] + 1)) - set(instances))
    if missing:
        raise ValueError(
            f"{argument}: instance(s) {missing} have no clicks; instances must be numbered 0..N-1 with at "
            f"least one click each (got instances {instances})"
        )
    ordered = [c for i in instances for c in clicks if c.instance == i]
    ordered += [c for c in clicks if c.instance is None]
    counts = [sum(1 for c in clicks if c.instance == i) for i in instances]
    return ordered, counts


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
