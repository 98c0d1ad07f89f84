"""The pixel decoder: multi-scale deformable attention over the three coarsest backbone levels, a top-down FPN
to stride 4, and DynaMITe's refine branch that fuses strides 8/16/32 into the mask features.

This reproduces Mask2Former's `MSDeformAttnPixelDecoder` as DynaMITe modifies it (spec section 1.3), in pure
PyTorch: the deformable attention samples with `grid_sample`, so it runs wherever PyTorch runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...inference.feed_forward import ffn_in_chunks
from .configuration_dynamite import DynamiteConfig


def sine_position_encoding(height: int, width: int, num_feats: int, device: torch.device) -> Tensor:
    """DETR's normalised sine encoding of a `height x width` map, `(1, 2 * num_feats, height, width)`.

    Channels are `[pos_y, pos_x]`, each with sin/cos interleaved per frequency pair; positions are
    `(i + 1) / (n + 1e-6) * 2 pi` as the original computes them (cumulative sum of an all-valid mask).
    """
    scale = 2 * math.pi
    y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
    x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
    y_embed = y_embed / (height + 1e-6) * scale
    x_embed = x_embed / (width + 1e-6) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x_embed[:, :, None] / dim_t
    pos_y = y_embed[:, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0)


def multi_scale_deformable_attention(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Deformable attention: attention-weighted bilinear samples (zero padding, `align_corners=False`).

    The same function as the original's `grid_sample` path, computed as one weighted gather-sum: each sample
    point contributes its four neighbouring pixels with weight (bilinear weight x attention weight), and
    `embedding_bag` sums them, so the `(batch * heads, head_dim, queries, levels * points)` stack of samples is
    never built.

    Args:
        value: `(batch, num_keys, num_heads, head_dim)`, the levels concatenated in `spatial_shapes` order.
        spatial_shapes: `(height, width)` of each level.
        sampling_locations: `(batch, num_queries, num_heads, num_levels, num_points, 2)`, xy in [0, 1].
        attention_weights: `(batch, num_queries, num_heads, num_levels, num_points)`.

    Returns:
        `(batch, num_queries, num_heads * head_dim)`.
    """
    batch, num_keys, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    device, dtype = value.device, sampling_locations.dtype
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)
    starts = torch.tensor([0] + [h * w for h, w in spatial_shapes[:-1]], dtype=dtype, device=device).cumsum(0)
    widths, heights = sizes[:, 0].view(1, 1, 1, -1, 1), sizes[:, 1].view(1, 1, 1, -1, 1)
    # Pixel coordinates exactly as grid_sample unnormalises its grid (2 * location - 1).
    pixel = ((2 * sampling_locations - 1 + 1) * sizes[None, None, None, :, None, :] - 1) / 2
    x, y = pixel[..., 0], pixel[..., 1]
    x0, y0 = x.floor(), y.floor()
    x1, y1 = x0 + 1, y0 + 1
    # Integer-valued float arithmetic is exact here (indices < 2**24), so the flat row of each corner is
    # formed in float and converted once. Corners outside the map get weight 0 (zero padding).
    base = (torch.arange(batch * num_heads, device=device, dtype=dtype) * num_keys).view(batch, 1, num_heads, 1, 1)
    base = base + starts.view(1, 1, 1, -1, 1)
    columns, rows = [], []
    for corner, limit, offsets in ((x0, widths, columns), (y0, heights, rows)):
        for coordinate in (corner, corner + 1):
            offsets.append((coordinate.clamp(min=0).minimum(limit - 1), (coordinate >= 0) & (coordinate < limit)))
    rows = [(row * widths, inside) for row, inside in rows]
    indices, weights = [], []
    for (column, column_inside), (row, row_inside), bilinear in (
        (columns[0], rows[0], (x1 - x) * (y1 - y)),
        (columns[1], rows[0], (x - x0) * (y1 - y)),
        (columns[0], rows[1], (x1 - x) * (y - y0)),
        (columns[1], rows[1], (x - x0) * (y - y0)),
    ):
        indices.append(base + row + column)
        weights.append(bilinear * attention_weights * (column_inside & row_inside))
    indices = torch.stack(indices, -1).view(batch * num_queries * num_heads, -1).long()
    weights = torch.stack(weights, -1).view(batch * num_queries * num_heads, -1)
    table = value.transpose(1, 2).reshape(batch * num_heads * num_keys, head_dim)
    if torch.is_grad_enabled() and (table.requires_grad or weights.requires_grad):
        output = WeightedGatherSum.apply(table, indices, weights)
    else:
        output = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    return output.view(batch, num_queries, num_heads * head_dim)


class WeightedGatherSum(torch.autograd.Function):
    """`output[b] = sum_k weights[b, k] * table[indices[b, k]]`: `embedding_bag`'s forward, with a backward that
    scatters with `index_add_` instead of sorting the indices (PyTorch's CPU backward of `embedding_bag` sorts
    them, single-threaded: 2-2.5x slower on the pixel decoder's shapes, about a fifth of a training step of the
    CPU preset). The backward runs over chunks of bags so that its `(bags, points, head_dim)` temporaries stay
    near 16 MB at any image size."""

    chunk_elements = 1 << 22

    @staticmethod
    def forward(ctx, table: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, indices, weights)
        return F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, indices, weights = ctx.saved_tensors
        bags, per_bag = indices.shape
        dim = table.shape[1]
        step = max(1, WeightedGatherSum.chunk_elements // (per_bag * dim))
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        for start in range(0, bags, step):
            chunk, grad = indices[start : start + step], grad_output[start : start + step]
            if grad_table is not None:
                contributions = weights[start : start + step, :, None] * grad[:, None, :]
                grad_table.index_add_(0, chunk.reshape(-1), contributions.reshape(-1, dim))
            if grad_weights is not None:
                # index_select copies whole rows (advanced indexing with a 2-D index copies element by element,
                # about 2x slower here); the same values.
                rows = table.index_select(0, chunk.reshape(-1)).view(*chunk.shape, dim)
                grad_weights[start : start + step] = torch.bmm(rows, grad[:, :, None]).squeeze(-1)
        return grad_table, None, grad_weights


def multi_scale_deformable_attention_by_grid_sample(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """`multi_scale_deformable_attention` as the original computes it: one `grid_sample` per level, then the
    attention-weighted sum of the samples (the same function up to float rounding; same arguments and output).

    It builds the `(batch * heads, head_dim, queries, levels * points)` stack of samples, but maps to ONNX's
    `GridSample`, where `embedding_bag` has no fast ONNX form: exported graphs use this one.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    level_values = value.split([height * width for height, width in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (batch, h * w, heads, head_dim) -> (batch * heads, head_dim, h, w); grid (batch * heads, queries, points, 2)
        level_value = level_values[level].flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (batch * heads, head_dim, queries, levels * points)
    weights = attention_weights.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    output = (stacked * weights).sum(-1).view(batch, num_heads * head_dim, num_queries)
    return output.transpose(1, 2)


class DynamiteMultiscaleDeformableAttention(nn.Module):
    """Multi-scale deformable self-attention of Deformable DETR (one query per pixel of every level)."""

    # Exported graphs sample with grid_sample (see multi_scale_deformable_attention_by_grid_sample).
    use_grid_sample: bool = False

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's initialisation: offsets start on rings around the reference point.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, value_input: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """`query`/`value_input` `(batch, length, dim)`; `reference_points` `(1, length, 1, 1, 1, 2)`, xy in
        [0, 1] (valid ratios are 1: the pixel decoder has no padding mask)."""
        batch, num_queries, dim = query.shape
        value = self.value_proj(value_input).view(batch, -1, self.num_heads, dim // self.num_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(batch, num_queries, self.num_heads, -1)
        weights = weights.softmax(-1).view(batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )  # xy order
        locations = reference_points + offsets / normalizer[None, None, None, :, None, :]
        attend = (
            multi_scale_deformable_attention_by_grid_sample
            if self.use_grid_sample
            else multi_scale_deformable_attention
        )
        return self.output_proj(attend(value, spatial_shapes, locations, weights))


class DynamiteDeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (ReLU)."""

    chunked: bool = True  # see DynamiteFeedForward.chunked

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = DynamiteMultiscaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, hidden: Tensor, position: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        attended = self.self_attn(hidden + position, reference_points, hidden, spatial_shapes)
        if torch.is_grad_enabled():
            hidden = self.norm1(hidden + attended)
            return self.norm2(hidden + self.linear2(F.relu(self.linear1(hidden))))
        # Inference: the same sums in place, sparing full-size temporaries (memory bandwidth is the limit here),
        # and the FFN over row chunks (`ffn_in_chunks`) unless pinned off for an exported graph.
        hidden = self.norm1(attended.add_(hidden))
        if self.chunked:
            return ffn_in_chunks(hidden, self.linear1, self.linear2, self.norm2, overwrite_input=True)
        return self.norm2(self.linear2(self.linear1(hidden).relu_()).add_(hidden))


class DynamiteConvNorm(nn.Module):
    """Conv (no bias) + GroupNorm (+ optional ReLU), as detectron2's `Conv2d(norm=...)` in the FPN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.relu = relu
        nn.init.kaiming_uniform_(self.conv.weight, a=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class DynamitePixelDecoder(nn.Module):
    """Backbone features -> (mask features at stride 4, multi-scale features at strides 32, 16, 8)."""

    def __init__(self, config: DynamiteConfig, backbone_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        dim = config.pixel_decoder_dim
        groups = config.group_norm_groups
        self.num_levels = 3
        self.num_fpn_levels = config.pixel_decoder_num_fpn_levels
        if not 1 <= self.num_fpn_levels <= 2:
            raise ValueError(f"pixel_decoder_num_fpn_levels must be 1 or 2, got {self.num_fpn_levels}")
        # Deformable-encoder inputs, coarsest first (index 0 = stride 32).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, dim, kernel_size=1), nn.GroupNorm(groups, dim))
            for channels in reversed(backbone_channels[1:])
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim).normal_())
        self.encoder_layers = nn.ModuleList(
            DynamiteDeformableEncoderLayer(
                dim,
                config.pixel_decoder_ffn_dim,
                config.pixel_decoder_num_heads,
                self.num_levels,
                config.pixel_decoder_num_points,
            )
            for _ in range(config.pixel_decoder_layers)
        )
        # Top-down FPN: fpn_lateral[i] / fpn_output[i] act on backbone level i (0 = stride 4); they are
        # applied from the coarsest FPN level down to stride 4.
        self.fpn_lateral = nn.ModuleList(
            DynamiteConvNorm(backbone_channels[i], dim, 1, groups, relu=False) for i in range(self.num_fpn_levels)
        )
        self.fpn_output = nn.ModuleList(
            DynamiteConvNorm(dim, dim, 3, groups, relu=True) for _ in range(self.num_fpn_levels)
        )
        self.refine = (
            nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(3)) if config.refine_mask_features else None
        )
        self.mask_projection = nn.Conv2d(dim, dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_projection.weight, a=1)
        nn.init.zeros_(self.mask_projection.bias)

    @staticmethod
    def _reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
        points = []
        for height, width in spatial_shapes:
            # Pixel centres 0.5, 1.5, ... (exact in float32, as linspace(0.5, n - 0.5, n) gives them); arange
            # keeps the size symbolic in an exported graph.
            ref_y, ref_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=device) + 0.5,
                torch.arange(width, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        return torch.cat(points, 0)[None, :, None, None, None, :]

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """`features`: the 4 backbone maps (strides 4, 8, 16, 32).

        Returns `mask_features` `(batch, dim, H/4, W/4)` and the multi-scale features
        `[(batch, dim, H/32, W/32), (batch, dim, H/16, W/16), (batch, dim, H/8, W/8)]`.
        """
        features = [f.float() for f in features]
        sources, positions, spatial_shapes = [], [], []
        for level, (proj, feature) in enumerate(zip(self.input_proj, reversed(features[1:]))):
            source = proj(feature)
            batch, dim, height, width = source.shape
            spatial_shapes.append((height, width))
            position = sine_position_encoding(height, width, dim // 2, source.device)
            sources.append(source.flatten(2).transpose(1, 2))
            positions.append(position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        hidden = torch.cat(sources, 1)
        position = torch.cat(positions, 1)
        reference_points = self._reference_points(spatial_shapes, hidden.device)
        for layer in self.encoder_layers:
            hidden = layer(hidden, position, reference_points, spatial_shapes)

        outputs = [
            level.transpose(1, 2).reshape(batch, dim, h, w)
            for level, (h, w) in zip(hidden.split([h * w for h, w in spatial_shapes], 1), spatial_shapes)
        ]
        for i in reversed(range(self.num_fpn_levels)):
            lateral = self.fpn_lateral[i](features[i])
            top_down = F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(self.fpn_output[i](lateral + top_down))
        multi_scale_features = outputs[: self.num_levels]

        finest = outputs[-1]
        if self.refine is not None:
            # Fuse the three maps just above the stride-4 one (strides 8, 16, 32; for the two-level FPN of
            # the released HRNet: the stride-8 FPN map, the stride-8 and the stride-16 transformer maps).
            to_fuse = outputs[::-1][1:4]
            fused = self.refine[0](to_fuse[0])
            for conv, feature in zip(self.refine[1:], to_fuse[1:]):
                # Upsampled by an exact power of 2 (the padded size is a multiple of 32); given as a size rather
                # than a scale factor (the same coordinates), so that an exported graph keeps symbolic sizes.
                fused = fused + F.interpolate(
                    conv(feature), size=fused.shape[-2:], mode="bilinear", align_corners=False
                )
            finest = F.interpolate(fused, size=finest.shape[-2:], mode="bilinear", align_corners=False) + finest
        return self.mask_projection(finest), multi_scale_features
