"""The pixel decoder's deformable attention and position encoding, against direct formulations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dynamite_hf.models.dynamite.pixel_decoder import (
    WeightedGatherSum,
    multi_scale_deformable_attention,
    sine_position_encoding,
)


def grid_sample_deformable_attention(value, spatial_shapes, locations, weights):
    """Deformable DETR's reference formulation: grid_sample each level, weight, sum."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, h, w)
        grid = (2 * locations[:, :, :, level] - 1).transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


def test_gather_sum_equals_grid_sample_including_points_outside_the_map() -> None:
    torch.manual_seed(0)
    shapes = [(3, 5), (6, 10), (12, 20)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8)
    # Locations spread beyond [0, 1] so that corners fall outside and must read as zero.
    locations = torch.rand(2, 30, 4, 3, 4, 2) * 1.4 - 0.2
    weights = torch.rand(2, 30, 4, 3, 4).softmax(-1)
    expected = grid_sample_deformable_attention(value, shapes, locations, weights)
    actual = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_gradients_equal_grid_sample_and_embedding_bags_own(monkeypatch) -> None:
    """The training path's scatter backward gives the same gradients for the values, the locations and the
    weights as grid_sample's, and as embedding_bag's own backward, also when the backward runs in chunks."""
    torch.manual_seed(0)
    shapes = [(3, 5), (6, 10), (12, 20)]
    inputs = (
        torch.randn(2, sum(h * w for h, w in shapes), 4, 8),
        torch.rand(2, 30, 4, 3, 4, 2) * 1.4 - 0.2,
        torch.rand(2, 30, 4, 3, 4).softmax(-1),
    )

    def gradients(function):
        leaves = [x.clone().requires_grad_() for x in inputs]
        output = function(leaves[0], shapes, leaves[1], leaves[2])
        (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
        return output, [leaf.grad for leaf in leaves]

    output, grads = gradients(multi_scale_deformable_attention)
    expected_output, expected = gradients(grid_sample_deformable_attention)
    torch.testing.assert_close(output, expected_output, rtol=1e-5, atol=1e-6)
    for actual, wanted in zip(grads, expected, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(
        WeightedGatherSum,
        "apply",
        lambda table, indices, weights: F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum"),
    )
    _, own = gradients(multi_scale_deformable_attention)
    monkeypatch.undo()
    monkeypatch.setattr(WeightedGatherSum, "chunk_elements", 100)  # many chunks of a few bags
    _, chunked = gradients(multi_scale_deformable_attention)
    for ours, theirs, in_chunks in zip(grads, own, chunked, strict=True):
        # Sums in another order: float32 rounding, scaled up to 20x in the locations' gradients (the map's width).
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        assert torch.equal(in_chunks, ours)


def test_sine_position_encoding_matches_detr_formula() -> None:
    encoding = sine_position_encoding(4, 6, 8, torch.device("cpu"))
    assert encoding.shape == (1, 16, 4, 6)
    row, col, i = 2, 3, 5  # channel 8 + 5 is pos_x frequency pair 2, cosine
    angle = (col + 1) / (6 + 1e-6) * 2 * math.pi / 10000 ** (2 * (i // 2) / 8)
    torch.testing.assert_close(encoding[0, 8 + i, row, col], torch.tensor(math.cos(angle)))
