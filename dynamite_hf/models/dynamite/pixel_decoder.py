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
    """Deformable attention as the original's pure-PyTorch path computes it (`ms_deform_attn_core_pytorch`): each
    level's values bilinearly sampled at the points (`grid_sample`, zero padding, `align_corners=False`), then the
    attention-weighted sum of the samples.

    Args:
        value: `(batch, num_keys, num_heads, head_dim)`, the levels concatenated in `spatial_shapes` order.
        spatial_shapes: `(height, width)` of each level.
        sampling_locations: `(batch, num_queries, num_heads, num_levels, num_points, 2)`, xy in [0, 1].
        attention_weights: `(batch, num_queries, num_heads, num_levels, num_points)`.

    Returns:
        `(batch, num_queries, num_heads * head_dim)`.
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

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def sampling(
        self, query: Tensor, reference_points: Tensor, value_input: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What `multi_scale_deformable_attention` takes: the projected values `(batch, length, heads, head_dim)`,
        the sampling locations `(batch, length, heads, levels, points, 2)` (xy in [0, 1]) and their attention
        weights `(batch, length, heads, levels, points)` (a softmax over each head's levels and points)."""
        batch, num_queries, dim = query.shape
        value = self.value_proj(value_input).view(batch, -1, self.num_heads, dim // self.num_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(batch, num_queries, self.num_heads, -1)
        weights = weights.softmax(-1).view(batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        # Offsets are in pixels of each level; xy order.
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points + offsets / normalizer[None, None, None, :, None, :]
        return value, locations, weights

    def forward(
        self, query: Tensor, reference_points: Tensor, value_input: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """`query`/`value_input` `(batch, length, dim)`; `reference_points` `(1, length, 1, 1, 1, 2)`, xy in
        [0, 1] (valid ratios are 1: the pixel decoder has no padding mask)."""
        value, locations, weights = self.sampling(query, reference_points, value_input, spatial_shapes)
        return self.output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights))


class DynamiteDeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (ReLU)."""

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
        hidden = self.norm1(hidden + self.self_attn(hidden + position, reference_points, hidden, spatial_shapes))
        return self.norm2(hidden + self.linear2(F.relu(self.linear1(hidden))))


class DynamiteConvNorm(nn.Module):
    """Conv (no bias) + GroupNorm (+ optional ReLU), as detectron2's `Conv2d(norm=...)` in the FPN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return F.relu_(x) if self.relu else x  # in place: the norm's output is this block's own


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
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim))
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

    def encoder_inputs(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]]]:
        """The deformable encoder's inputs from the 4 backbone maps (strides 4, 8, 16, 32): the projected levels
        (strides 32, 16, 8) flattened and concatenated `(batch, pixels, dim)`, their sine position encodings plus the
        level embedding (same shape), the reference points `(1, pixels, 1, 1, 1, 2)` (pixel centres, xy in [0, 1])
        and the levels' `(height, width)`."""
        sources, positions, spatial_shapes = [], [], []
        for level, (proj, feature) in enumerate(zip(self.input_proj, reversed(features[1:]), strict=True)):
            source = proj(feature)
            _, dim, height, width = source.shape
            spatial_shapes.append((height, width))
            position = sine_position_encoding(height, width, dim // 2, source.device)
            sources.append(source.flatten(2).transpose(1, 2))
            positions.append(position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        reference_points = self._reference_points(spatial_shapes, features[0].device)
        return torch.cat(sources, 1), torch.cat(positions, 1), reference_points, spatial_shapes

    def decode_levels(
        self, hidden: Tensor, spatial_shapes: list[tuple[int, int]], features: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """The encoded levels `(batch, pixels, dim)` -> the mask features (FPN to stride 4, refine branch, 1x1
        projection) and the multi-scale features, as `forward` returns them."""
        batch, _, dim = hidden.shape
        outputs = [
            level.transpose(1, 2).reshape(batch, dim, h, w)
            for level, (h, w) in zip(hidden.split([h * w for h, w in spatial_shapes], 1), spatial_shapes, strict=True)
        ]
        for i in reversed(range(self.num_fpn_levels)):
            top_down = F.interpolate(outputs[-1], size=features[i].shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(self.fpn_output[i](top_down.add_(self.fpn_lateral[i](features[i]))))
        multi_scale_features, finest = outputs[: self.num_levels], outputs[-1]
        # The three maps just above the stride-4 one (strides 8, 16, 32; for the two-level FPN of the released HRNet:
        # the stride-8 FPN map, the stride-8 and the stride-16 transformer maps), fused by the refine branch.
        to_fuse = outputs[::-1][1:4]
        del outputs  # the stride-4 FPN map is `finest` alone now: the sum below frees it
        if self.refine is not None:
            fused = self.refine[0](to_fuse[0])
            for conv, feature in zip(self.refine[1:], to_fuse[1:], strict=True):
                # Upsampled by an exact power of 2 (the padded size is a multiple of 32); given as a size rather
                # than a scale factor (the same coordinates), so that an exported graph keeps symbolic sizes.
                fused = fused + F.interpolate(
                    conv(feature), size=fused.shape[-2:], mode="bilinear", align_corners=False
                )
            finest = F.interpolate(fused, size=finest.shape[-2:], mode="bilinear", align_corners=False).add_(finest)
        return self.mask_projection(finest), multi_scale_features

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """`features`: the 4 backbone maps (strides 4, 8, 16, 32).

        Returns `mask_features` `(batch, dim, H/4, W/4)` and the multi-scale features
        `[(batch, dim, H/32, W/32), (batch, dim, H/16, W/16), (batch, dim, H/8, W/8)]`.
        """
        hidden, position, reference_points, spatial_shapes = self.encoder_inputs(features)
        for layer in self.encoder_layers:
            hidden = layer(hidden, position, reference_points, spatial_shapes)
        return self.decode_levels(hidden, spatial_shapes, features)
