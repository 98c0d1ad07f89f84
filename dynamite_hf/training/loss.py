"""The training loss (spec section 2.3): per image, N instance predictions (max over each instance's click
queries) and one background prediction (max over every other query) against the N instance masks and the
background mask; point-sampled BCE + Dice (Mask2Former/PointRend importance sampling), deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.dynamite.image_processing_dynamite import fuse_queries


def point_sample(inputs: Tensor, coords_xy: Tensor) -> Tensor:
    """Values of `inputs` `(M, C, H, W)` at normalised `[0, 1]` xy points `(M, P, 2)`: `(M, C, P)` (bilinear,
    `align_corners=False`, zero outside)."""
    return F.grid_sample(inputs, 2.0 * coords_xy[:, :, None, :] - 1.0, align_corners=False)[..., 0]


def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Point coordinates `(M, num_points, 2)`: the `importance_ratio` share most uncertain (smallest |logit|)
    among `oversample_ratio * num_points` random candidates, the rest uniform."""
    masks = logits.shape[0]
    candidates = torch.rand(masks, int(num_points * oversample_ratio), 2, generator=generator, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()[:, 0]
    num_uncertain = int(importance_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand(masks, num_points - num_uncertain, 2, generator=generator, device=logits.device)
    return torch.cat((chosen, uniform), dim=1)


def click_disk_points(clicks, size: tuple[int, int], radius: int = 2) -> Tensor:
    """Normalised xy points `(P, 2)` of the pixels within `radius` of each click (model frame, pixel indices),
    at pixel centres, inside the `size` `(height, width)` input. Added to the loss's sampled points so that
    every click's own pixel and its neighbourhood are always supervised: the prediction at a clicked pixel is
    exactly what a user sees obeyed or not."""
    offsets = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    ]
    height, width = size
    points = [
        ((click.col + dx + 0.5) / width, (click.row + dy + 0.5) / height)
        for click in clicks
        for dy, dx in offsets
        if 0 <= click.row + dy < height and 0 <= click.col + dx < width
    ]
    return torch.tensor(points, dtype=torch.float32).reshape(-1, 2)


def group_logits(query_logits: Tensor, query_labels: Tensor) -> Tensor:
    """`(Q, h, w)` per-query logits -> `(N + 1, h, w)`: each instance's max over its queries, then the max over
    every background query (background clicks, batch padding, static background queries); `query_labels` `(Q,)`
    as the model returns them."""
    instance_logits, background_logits = fuse_queries(query_logits, query_labels, int(query_labels.max()))
    return torch.cat((instance_logits, background_logits[None]))


def mask_losses(
    predictions: Sequence[Tensor],
    targets: Sequence[Tensor],
    num_masks: float,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    extra_points: Sequence[Tensor] | None = None,
    extra_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE and Dice over sampled points, summed over masks and divided by `num_masks`.

    Args:
        predictions: per image `(N_i + 1, h, w)` logits (stride 4).
        targets: per image `(N_i + 1, H, W)` float masks at the input resolution.
        num_masks: the normaliser (sum of N_i + 1 over the global batch, divided by the process count).
        extra_points: per image `(P_i, 2)` normalised xy points added to every mask of that image on top of the
            sampled ones (the clicks: `click_disk_points`); None for the paper's sampling alone.
        extra_weight: the weight of each extra point against one sampled point.
    """
    # Float32 whatever the predictions' precision: the original's point sampling and BCE autocast to float32.
    logits = torch.cat(list(predictions)).float()[:, None]
    labels = torch.cat(list(targets))[:, None].float()
    with torch.no_grad():
        coords = uncertain_points(logits, num_points, oversample_ratio, importance_ratio, generator)
        weights = torch.ones(coords.shape[:2], device=logits.device)
        if extra_points is not None:
            # Pad every image's points to one count; padded slots carry weight 0.
            longest = max((len(p) for p in extra_points), default=0)
            extra = torch.zeros(len(logits), longest, 2, device=logits.device)
            extra_weights = torch.zeros(len(logits), longest, device=logits.device)
            first = 0
            for points, prediction in zip(extra_points, predictions, strict=True):
                count = prediction.shape[0]
                extra[first : first + count, : len(points)] = points.to(logits.device)
                extra_weights[first : first + count, : len(points)] = extra_weight
                first += count
            coords = torch.cat((coords, extra), 1)
            weights = torch.cat((weights, extra_weights), 1)
        point_labels = point_sample(labels, coords)[:, 0]
    point_logits = point_sample(logits, coords)[:, 0]
    point_bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    bce = ((point_bce * weights).sum(1) / weights.sum(1)).sum() / num_masks
    probabilities = point_logits.sigmoid() * weights
    numerator = 2 * (probabilities * point_labels).sum(-1)
    denominator = probabilities.sum(-1) + (point_labels * weights).sum(-1)
    dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
    return bce, dice


def deep_supervision_loss(
    pred_masks: Tensor,
    aux_pred_masks: Sequence[Tensor],
    query_labels: Tensor,
    targets: Sequence[Tensor],
    num_masks: float,
    bce_weight: float = 5.0,
    dice_weight: float = 5.0,
    generator: torch.Generator | None = None,
    extra_points: Sequence[Tensor] | None = None,
    extra_weight: float = 1.0,
    **point_options,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted BCE + Dice on the final prediction and each auxiliary one given; returns the total and the
    per-term values (final prediction's BCE / Dice and the auxiliary sum) for logging. `extra_points`: see
    `mask_losses`."""
    total = pred_masks.new_zeros((), dtype=torch.float32)
    logged = {}
    for name, query_logits in [("final", pred_masks)] + [(f"aux_{i}", a) for i, a in enumerate(aux_pred_masks)]:
        predictions = [group_logits(query_logits[i], labels) for i, labels in enumerate(query_labels)]
        bce, dice = mask_losses(
            predictions,
            targets,
            num_masks,
            generator=generator,
            extra_points=extra_points,
            extra_weight=extra_weight,
            **point_options,
        )
        total = total + bce_weight * bce + dice_weight * dice
        if name == "final":
            logged.update(loss_bce=bce.item(), loss_dice=dice.item())
    logged["loss"] = total.item()
    return total, logged
