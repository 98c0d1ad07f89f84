"""Edge-aware refinement of the instance probabilities: a colour guided filter (He, Sun and Tang, "Guided Image
Filtering", TPAMI 2013) in its fast form (He and Sun, "Fast Guided Filter", 2015).

The model predicts masks at stride 4 of its working size; upsampled bilinearly, their boundaries are smooth
curves that cut across the image's edges. The guided filter fits, in every window of `2 * radius + 1` pixels, each
class probability as a linear function of the pixel's colour, `q = a . I + b`, and averages the fitted `a, b` over
the windows that hold a pixel: where the window straddles an edge of the photo, the mask boundary snaps to that
edge; where the colour is flat, `q` is the window's mean probability. The coefficients are fitted at the model's
working size and upsampled to the output size, where they are applied to the image at that size. Each class is
filtered only within `2 * radius` of where its probability is not negligible (a pixel's output depends on nothing
farther), so small objects cost little.

The filter is linear in the probabilities and keeps constants: filtering the softmax over `[instances...,
background]` keeps the sum of the classes at 1 in every pixel (up to the negligible probabilities left out), so
`DynamiteImageProcessor.post_process_masks` filters the instances, gives the background 1 minus their sum and
labels each pixel with the largest.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _window_sums_last_axis(values: Tensor, radius: int) -> Tensor:
    """Sums over windows of `2 * radius + 1` along the last axis (zeros outside), from one cumulative sum."""
    width = 2 * radius + 1
    cumulative = F.pad(values, (radius + 1, radius)).cumsum(-1)
    return cumulative[..., width:] - cumulative[..., :-width]


def _window_counts(size: int, radius: int, device: torch.device) -> Tensor:
    index = torch.arange(size, device=device)
    return (index + radius + 1).clamp(max=size) - (index - radius).clamp(min=0)


def box_mean(values: Tensor, radius: int) -> Tensor:
    """Mean of `(channels, height, width)` over `(2 * radius + 1)` square windows; at the borders over the part
    of the window inside the image. Cumulative sums, so the cost does not grow with the radius; both run along
    the last (contiguous) axis, as a cumulative sum across rows is about 8x slower in torch on the CPU."""
    _, height, width = values.shape
    summed = _window_sums_last_axis(values, radius).transpose(1, 2).contiguous()
    summed = _window_sums_last_axis(summed, radius)
    counts = _window_counts(width, radius, values.device)[:, None] * _window_counts(height, radius, values.device)
    # Divided while the rows are still the last axis, then back to the input's layout in the same copy.
    return summed.div_(counts.to(values.dtype)).transpose(1, 2).contiguous()


def image_to_guide(image: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
    """An `(H, W, 3)` uint8 RGB image as the filter's guide: `(3, height, width)` float32 in [0, 1], resized
    (bilinear, antialiased when shrinking) to `size` if given."""
    guide = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    if size is not None and tuple(size) != tuple(guide.shape[1:]):
        shrink = size[0] < guide.shape[1] or size[1] < guide.shape[2]
        guide = F.interpolate(guide[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)[0]
    return guide


def half_size(size: tuple[int, int]) -> tuple[int, int]:
    """`(height, width)` halved, rounded up: where previews fit the filter."""
    return (size[0] + 1) // 2, (size[1] + 1) // 2


def half_radius(radius: int) -> int:
    """The radius of the filter fitted at `half_size` that matches `radius` at the full size (at least 1)."""
    return max(1, round(radius / 2))


def halve(maps: Tensor) -> Tensor:
    """`(C, h, w)` maps at `half_size` (antialiased bilinear, as `image_to_guide` shrinks the guide)."""
    return F.interpolate(maps[None], size=half_size(tuple(maps.shape[1:])), mode="bilinear", antialias=True)[0]


class GuidedFilter:
    """The colour guided filter of one image at the model's working size; apply it to any number of class maps.

    Args:
        guide: `(3, h, w)` float32 colours in [0, 1] at the size of the probabilities it will filter.
        radius: window radius in pixels of that size (positive).
        eps: regularisation of the colour covariance; larger values smooth more across weak edges.

    What depends only on the image (the window means of the colours and the inverse of their regularised
    covariance) is computed here, once per image.
    """

    def __init__(self, guide: Tensor, radius: int, eps: float) -> None:
        if guide.ndim != 3 or guide.shape[0] != 3:
            raise ValueError(f"guide must be (3, height, width), got shape {tuple(guide.shape)}")
        if not isinstance(radius, int) or radius < 1:
            raise ValueError(f"radius must be a positive int, got {radius!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.guide = guide
        self.radius = radius
        self.mean = box_mean(guide, radius)
        pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        products = box_mean(torch.stack([guide[i] * guide[j] for i, j in pairs]), radius)
        s00, s01, s02, s11, s12, s22 = (
            products[k] - self.mean[i] * self.mean[j] + (eps if i == j else 0.0) for k, (i, j) in enumerate(pairs)
        )
        # The inverse of the symmetric 3x3 covariance per pixel, from its cofactors (a batched solve is far slower).
        c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
        c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
        determinant = s00 * c00 + s01 * c01 + s02 * c02
        self.inverse = (
            torch.stack([c00, c01, c02, c01, c11, c12, c02, c12, c22]).div_(determinant).view(3, 3, *s00.shape)
        )

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.guide, self.mean, self.inverse))

    def __call__(self, probabilities: Tensor, output_guide: Tensor | None = None) -> Tensor:
        """Filter `(classes, h, w)` maps; with `output_guide` `(3, H, W)` (the image at the output size), the
        coefficients are upsampled and applied there. Returns `(classes, H, W)` (or `(classes, h, w)`)."""
        classes, height, width = probabilities.shape
        if (height, width) != tuple(self.guide.shape[1:]):
            raise ValueError(
                f"probabilities are {height}x{width} but the guide is {self.guide.shape[1]}x{self.guide.shape[2]}"
            )
        if output_guide is None:
            output_guide = self.guide
        out_height, out_width = output_guide.shape[1:]
        # Each output pixel's source coordinate in the working size, as bilinear resizing with
        # align_corners=False (F.interpolate) computes it.
        source_rows = _source_coordinates(out_height, height, probabilities.device)
        source_cols = _source_coordinates(out_width, width, probabilities.device)
        # Zero (q = 0) wherever a class's probability is negligible within the filter's reach.
        refined = probabilities.new_zeros(classes, out_height, out_width)
        for index in range(classes):
            window = self._support(probabilities[index])
            if window is None:
                continue
            rows, cols = window
            coefficients = self._coefficients(probabilities[index : index + 1, rows, cols], window)
            out_rows = _inside(source_rows, rows)
            out_cols = _inside(source_cols, cols)
            if (out_height, out_width) != (height, width):
                coefficients = _resize_to(
                    coefficients, source_rows[out_rows] - rows.start, source_cols[out_cols] - cols.start
                )
            guide = output_guide[:, out_rows, out_cols]
            target = refined[index, out_rows, out_cols]
            torch.addcmul(coefficients[3], coefficients[0], guide[0], out=target)
            target.addcmul_(coefficients[1], guide[1]).addcmul_(coefficients[2], guide[2])
        return refined

    # Probabilities below this are treated as 0: the filter works only within `2 * radius` of a class's pixels
    # above it (a pixel's output depends on the input within that distance). A class has at least
    # `1 / classes` somewhere it can win, so only margins below this can change.
    negligible = 1e-3

    def _support(self, probability: Tensor) -> tuple[slice, slice] | None:
        """Rows and columns within `2 * radius` of the pixels where `probability` `(h, w)` is not negligible."""
        significant = probability > self.negligible
        rows = significant.any(1).nonzero()
        if rows.numel() == 0:
            return None
        cols = significant.any(0).nonzero()
        reach = 2 * self.radius
        height, width = probability.shape
        return (
            slice(max(int(rows[0]) - reach, 0), min(int(rows[-1]) + reach + 1, height)),
            slice(max(int(cols[0]) - reach, 0), min(int(cols[-1]) + reach + 1, width)),
        )

    def _coefficients(self, probability: Tensor, window: tuple[slice, slice]) -> Tensor:
        """The window-averaged `a` (3 channels) and `b` (the fourth) of one class `(1, h, w)` inside `window`."""
        rows, cols = window
        guide, mean, inverse = self.guide[:, rows, cols], self.mean[:, rows, cols], self.inverse[:, :, rows, cols]
        mean_p = box_mean(probability, self.radius)[0]
        covariance = box_mean(guide * probability, self.radius) - mean * mean_p
        # slope = inverse @ covariance and offset = mean_p - slope . mean per pixel, written out (an einsum over
        # the per-pixel 3x3 products is several times slower).
        slope = torch.stack([sum(covariance[j] * inverse[i, j] for j in range(3)) for i in range(3)])
        offset = mean_p - slope[0] * mean[0] - slope[1] * mean[1] - slope[2] * mean[2]
        return box_mean(torch.cat([slope, offset[None]]), self.radius)


def _source_coordinates(output_size: int, input_size: int, device: torch.device) -> Tensor:
    """Where each of `output_size` pixels samples an axis of `input_size` in bilinear resizing with
    `align_corners=False`: `(i + 0.5) * input / output - 0.5`, clamped to `[0, input_size - 1]`."""
    index = torch.arange(output_size, dtype=torch.float32, device=device)
    return ((index + 0.5) * (input_size / output_size) - 0.5).clamp_(0, input_size - 1)


def _inside(source: Tensor, window: slice) -> slice:
    """The output pixels whose source coordinate lies in `window` (source is non-decreasing)."""
    start = int(torch.searchsorted(source, torch.tensor(float(window.start))))
    stop = int(torch.searchsorted(source, torch.tensor(float(window.stop - 1)), right=True))
    return slice(start, stop)


def _resize_to(values: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Bilinear samples of `(channels, h, w)` at source coordinates `rows` x `cols` (within `[0, h - 1]` and
    `[0, w - 1]`): F.interpolate's arithmetic on a window, so a window resizes as the whole map would."""
    height, width = values.shape[1:]
    # grid_sample's bilinear with align_corners=True reads pixel centres at -1 .. 1: the same weights as above.
    grid_rows = rows * (2.0 / max(height - 1, 1)) - 1.0
    grid_cols = cols * (2.0 / max(width - 1, 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(grid_cols[None, :], grid_rows[:, None]), dim=-1)
    return F.grid_sample(values[None], grid[None], mode="bilinear", align_corners=True)[0]


class BoundaryRefiner:
    """Boundary refinement of one image's masks: the guided filters and guides of that image, built on first use
    and kept for the next click (what depends only on the image costs about as much as filtering once).

    Args:
        image: `(H, W, 3)` uint8 RGB, the image at its original size.
        working_size: `(height, width)` of the resized image the model saw: the filters are fitted there.
        radius, eps: the filter's window radius (in working-size pixels) and regularisation.
        temperature: instance probabilities are the softmax over `[instances..., background]` of the logits
            divided by this.
    """

    def __init__(
        self, image: np.ndarray, working_size: tuple[int, int], radius: int, eps: float, temperature: float
    ) -> None:
        if not isinstance(radius, int) or radius < 1:
            raise ValueError(f"radius must be a positive int, got {radius!r}")
        self.image = image
        self.working_size = tuple(working_size)
        self.radius, self.eps, self.temperature = radius, eps, temperature
        self._working_guide: Tensor | None = None
        self._filter: GuidedFilter | None = None  # at the working size
        self._half_filter: GuidedFilter | None = None  # at half the working size, for previews
        self._output_guide: tuple[tuple[int, int], Tensor] | None = None  # the image at the last output size

    def nbytes(self) -> int:
        """Bytes of the guides and filters built so far."""
        tensors = [self._working_guide, self._output_guide[1] if self._output_guide is not None else None]
        for guided_filter in (self._filter, self._half_filter):
            if guided_filter is not None:
                tensors += [guided_filter.guide, guided_filter.mean, guided_filter.inverse]
        return sum(t.nbytes for t in {id(t): t for t in tensors if t is not None}.values())

    def probabilities(self, grouped_logits: Tensor, num_instances: int) -> Tensor:
        """The instances' probabilities `(num_instances, h, w)`: the softmax over `[instances..., background]` of
        `grouped_logits` `(num_instances [+ 1], h, w)` (the last map the background's, if any) over the temperature."""
        return torch.softmax(grouped_logits.float() / self.temperature, dim=0)[:num_instances]

    def __call__(self, probabilities: Tensor, output_size: tuple[int, int], preview: bool = False) -> Tensor:
        """Filter the instances' probabilities and return them at `output_size` `(num_instances, H, W)`.

        Exact (`preview=False`): `probabilities` at the working size; the filter's coefficients are applied to the
        image at `output_size`. A preview takes them at `half_size` of the working size (a quarter of the pixels
        to resize and group), fits the filter there (half the radius) and applies it to the image at the working
        size, then resizes: He and Sun's fast guided filter one step further; its boundaries differ from the
        exact ones by about a pixel of the working size."""
        output_size = tuple(output_size)
        if preview:
            if self._half_filter is None:
                guide = image_to_guide(self.image, half_size(self.working_size))
                self._half_filter = GuidedFilter(guide, half_radius(self.radius), self.eps)
            refined = self._half_filter(probabilities, self._guide_at_working_size())
        else:
            if self._filter is None:
                self._filter = GuidedFilter(self._guide_at_working_size(), self.radius, self.eps)
            refined = self._filter(probabilities, self._guide_at(output_size))
        if tuple(refined.shape[1:]) != output_size:
            refined = F.interpolate(refined[None], size=output_size, mode="bilinear", align_corners=False)[0]
        return refined

    def _guide_at_working_size(self) -> Tensor:
        if self._working_guide is None:
            self._working_guide = image_to_guide(self.image, self.working_size)
        return self._working_guide

    def _guide_at(self, output_size: tuple[int, int]) -> Tensor:
        if self._output_guide is None or self._output_guide[0] != output_size:
            self._output_guide = (output_size, image_to_guide(self.image, output_size))
        return self._output_guide[1]
