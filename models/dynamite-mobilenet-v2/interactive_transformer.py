"""The interactive transformer (spec section 1.4): clicks -> queries -> a masked-attention encoder over the three
pixel-decoder levels -> a reverse cross-attention decoder in which every stride-4 pixel attends to the queries ->
per-query mask logits.

Everything here runs once per click, on the image's cached pixel-decoder features. This is the plain computation,
as the original's `DynamiteInteractiveTransformer` makes it; faster ways of computing the same function live in
`dynamite_hf.inference` and are tested against this one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention_function
from .configuration_dynamite import DynamiteConfig
from .pixel_decoder import sine_position_encoding

# `input_labels` of a padding slot (SAM's `point_pad_value`).
PAD_LABEL = -10


def click_position_encoding(coords: Tensor, num_feats: int) -> Tensor:
    """Sine encoding of normalised click coordinates, `(..., num_feats)` per coordinate.

    `coords` `(...)` holds values in [0, 1] for clicks and -1 for padding slots, whose angles are forced to 0 (sin)
    and pi/2 (cos) as the original does, which gives an (almost exactly) zero vector.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = (coords * (2 * math.pi))[..., None] / dim_t
    padding = (coords < 0)[..., None]
    even = torch.where(padding, torch.zeros_like(angles[..., 0::2]), angles[..., 0::2])
    odd = torch.where(padding, torch.full_like(angles[..., 1::2], math.pi / 2), angles[..., 1::2])
    return torch.stack((even.sin(), odd.cos()), dim=-1).flatten(-2)


class DynamiteAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (the original's `nn.MultiheadAttention`, its packed
    `in_proj` split in three), batch-first; the function that attends is `config._attn_implementation`'s."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        self.config = config
        self.is_causal = False
        dim = config.hidden_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.scaling = math.sqrt(1.0 / self.head_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """`(batch, length, dim)` -> `(batch, heads, length, head_dim)`."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """`query` `(batch, q_len, dim)`, `key`/`value` `(batch, k_len, dim)`; `attention_mask` bool, broadcastable
        to `(batch, heads, q_len, k_len)`, True where a query may look. Returns `(batch, q_len, dim)`."""
        batch, length, dim = query.shape
        attended, _ = attention_function(self.config)(
            self,
            self.split_heads(self.q_proj(query)),
            self.split_heads(self.k_proj(key)),
            self.split_heads(self.v_proj(value)),
            attention_mask,
            scaling=self.scaling,
        )
        return self.out_proj(attended.reshape(batch, length, dim))


class DynamiteCrossAttentionLayer(nn.Module):
    """Post-norm cross-attention block: `norm(x + attention(x + x_pos, memory + memory_pos, memory))`."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        self.attention = DynamiteAttention(config)
        self.norm = nn.LayerNorm(config.hidden_dim)

    def forward(
        self,
        hidden: Tensor,
        position: Tensor,
        memory: Tensor,
        memory_position: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        return self.norm(hidden + self.attention(hidden + position, memory + memory_position, memory, attention_mask))


class DynamiteSelfAttentionLayer(nn.Module):
    """Post-norm self-attention among the queries (no key-padding mask: padding slots take part)."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        self.attention = DynamiteAttention(config)
        self.norm = nn.LayerNorm(config.hidden_dim)

    def forward(self, hidden: Tensor, position: Tensor) -> Tensor:
        with_position = hidden + position
        return self.norm(hidden + self.attention(with_position, with_position, hidden))


class DynamiteFeedForward(nn.Module):
    """Post-norm FFN block with ReLU."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.norm(hidden + self.linear2(F.relu(self.linear1(hidden))))


class DynamiteEncoderLayer(nn.Module):
    """Masked cross-attention from the queries to one pixel-decoder level, self-attention among the queries, FFN."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        self.cross_attention = DynamiteCrossAttentionLayer(config)
        self.self_attention = DynamiteSelfAttentionLayer(config)
        self.ffn = DynamiteFeedForward(config.hidden_dim, config.encoder_ffn_dim)

    def forward(
        self, hidden: Tensor, position: Tensor, level: Tensor, level_position: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """`hidden`, `position` `(batch, queries, dim)`; `level`, `level_position` `(batch, level_pixels, dim)`;
        `attention_mask` `(batch, 1, queries, level_pixels)`, True where a query may look."""
        hidden = self.cross_attention(hidden, position, level, level_position, attention_mask)
        return self.ffn(self.self_attention(hidden, position))


class DynamiteDecoderLayer(nn.Module):
    """Reverse cross-attention: every stride-4 pixel attends to the queries (no mask); then an FFN."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        self.cross_attention = DynamiteCrossAttentionLayer(config)
        self.ffn = DynamiteFeedForward(config.hidden_dim, config.decoder_ffn_dim)

    def forward(self, pixels: Tensor, pixel_position: Tensor, queries: Tensor, query_position: Tensor) -> Tensor:
        """`pixels`, `pixel_position` `(batch, num_pixels, dim)`; `queries`, `query_position` `(batch, queries,
        dim)`. Returns the updated pixels."""
        return self.ffn(self.cross_attention(pixels, pixel_position, queries, query_position))


class DynamiteMLP(nn.Module):
    """A stack of linear layers with ReLU between them."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DynamiteInteractiveTransformer(nn.Module):
    """Click queries -> per-query mask logits, given the pixel-decoder features of the image."""

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.num_levels = 3
        self.positional_embedding = config.positional_embedding
        self.temporal_norm = config.temporal_norm
        self.num_static_bg_queries = config.num_static_bg_queries

        self.query_embed = nn.Parameter(torch.empty(dim))
        if self.num_static_bg_queries > 0:
            self.static_bg_pe = nn.Parameter(torch.empty(self.num_static_bg_queries, dim))
            self.static_bg_query = nn.Parameter(torch.empty(self.num_static_bg_queries, dim))
        # Pads the click lists of a batch to equal length; zero and frozen, as in the original.
        self.bg_query = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.level_embed = nn.Embedding(self.num_levels, dim)
        self.query_projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        pe_inputs = {"spatio_temporal": 3 * (dim // 2), "spatial": dim, "temporal": dim, "none": 0}
        self.click_position_projection = (
            nn.Linear(pe_inputs[self.positional_embedding], dim) if self.positional_embedding != "none" else None
        )
        self.encoder_layers = nn.ModuleList(DynamiteEncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DynamiteDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.mask_embed = DynamiteMLP(dim, 3)

    # -- the parts ----------------------------------------------------------------------------------------------
    def click_queries(
        self,
        multi_scale_features: Sequence[Tensor],
        points: Tensor,
        labels: Tensor,
        timestamps: Tensor,
        padded_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """The initial queries and their positional embeddings, `(batch, clicks + static, dim)` each.

        Args:
            multi_scale_features: the pixel-decoder maps at strides 32, 16 and 8.
            points: `(batch, clicks, 2)` click positions `(x, y)` in pixels of the padded input, in query order
                (`order_clicks`); padding slots anywhere.
            labels: `(batch, clicks)`: padding slots are `PAD_LABEL`, every other value is a click.
            timestamps: `(batch, clicks)` int: the global click counter of each click (0 for padding).
            padded_size: `(height, width)` of the padded input.
        """
        is_padding = labels == PAD_LABEL
        height, width = padded_size
        # Content: the mean over the three levels of the features bilinearly sampled at the click. The position is
        # normalised in float32 by the padded size, as the original's `point_sample`.
        points_float = points.float()
        grid = torch.stack((points_float[..., 0] / width, points_float[..., 1] / height), -1)[:, :, None, :]
        sampled = [
            F.grid_sample(feature, 2.0 * grid - 1.0, align_corners=False).squeeze(-1).transpose(1, 2)
            for feature in multi_scale_features
        ]
        descriptors = torch.mean(torch.stack(sampled, -1), dim=-1)
        hidden = torch.where(is_padding[..., None], self.bg_query.expand_as(descriptors), descriptors)

        # Position: the shared query embedding plus the projected sine encoding of (y, x, t); the original divides in
        # float64 (Python) before making the float32 tensor, and encodes padding slots as (-1, -1, -1).
        batch, num_clicks = labels.shape
        position = self.query_embed.expand(batch, num_clicks, -1)
        if self.click_position_projection is not None:
            latest = timestamps.masked_fill(is_padding, 0).amax(-1, keepdim=True) if num_clicks else timestamps
            normaliser = latest.double().clamp(min=self.temporal_norm)
            normalized = torch.stack(
                (points[..., 1].double() / height, points[..., 0].double() / width, timestamps.double() / normaliser),
                -1,
            )
            normalized = normalized.masked_fill(is_padding[..., None], -1.0).float()
            dim = position.shape[-1]
            if self.positional_embedding == "temporal":
                encoding = click_position_encoding(normalized[..., 2], dim)
            else:
                parts = [normalized[..., 0], normalized[..., 1]]
                if self.positional_embedding == "spatio_temporal":
                    parts.append(normalized[..., 2])
                encoding = torch.cat([click_position_encoding(p, dim // 2) for p in parts], dim=-1)
            position = position + self.click_position_projection(encoding)

        if self.num_static_bg_queries > 0:
            hidden = torch.cat((hidden, self.static_bg_query.expand(batch, -1, -1)), 1)
            position = torch.cat((position, self.static_bg_pe.expand(batch, -1, -1)), 1)
        return self.query_projection(hidden), position

    def predict_masks(self, hidden: Tensor, mask_features: Tensor) -> Tensor:
        """The mask head: `(batch, queries, dim)` x `(batch, dim, h, w)` -> logits `(batch, queries, h, w)`."""
        embedding = self.mask_embed(self.layer_norm(hidden))
        return torch.einsum("bqc,bchw->bqhw", embedding, mask_features)

    @staticmethod
    def attention_mask(logits: Tensor, size: tuple[int, int]) -> Tensor:
        """The next encoder layer's mask `(batch, 1, queries, h * w)` (every head alike) from the stride-4 logits:
        resized to the level's `size` (bilinear), a query may look where its sigmoid is at least 0.5. A query that
        could look nowhere looks everywhere (Mask2Former's rule)."""
        resized = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return ~blocked[:, None].detach()

    def levels(self, multi_scale_features: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The encoder's memory: each level flattened `(batch, h * w, dim)` plus its level embedding, and its sine
        position encoding."""
        memory = []
        for level, feature in enumerate(multi_scale_features):
            _, dim, height, width = feature.shape
            source = feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level][None, None, :]
            position = sine_position_encoding(height, width, dim // 2, feature.device).flatten(2).transpose(1, 2)
            memory.append((source, position.to(source.dtype)))
        return memory

    # -- the whole ----------------------------------------------------------------------------------------------
    def forward(
        self,
        multi_scale_features: Sequence[Tensor],
        mask_features: Tensor,
        points: Tensor,
        labels: Tensor,
        timestamps: Tensor,
        padded_size: tuple[int, int],
    ) -> tuple[Tensor, list[Tensor]]:
        """Per-query mask logits of clicks in query order (see `click_queries` for the click arguments).

        Returns:
            `pred_masks` `(batch, queries, H/4, W/4)`, computed with the decoder-refined mask features, and the 10
            earlier predictions (the initial queries', then each encoder layer's), made with the pixel-decoder mask
            features, which masked the encoder's attention.
        """
        hidden, position = self.click_queries(multi_scale_features, points, labels, timestamps, padded_size)
        memory = self.levels(multi_scale_features)
        logits = self.predict_masks(hidden, mask_features)
        auxiliary = []
        for index, layer in enumerate(self.encoder_layers):
            auxiliary.append(logits)
            level, level_position = memory[index % self.num_levels]
            size = multi_scale_features[index % self.num_levels].shape[-2:]
            hidden = layer(hidden, position, level, level_position, self.attention_mask(logits, size))
            logits = self.predict_masks(hidden, mask_features)
        if len(self.decoder_layers) == 0:
            return logits, auxiliary
        auxiliary.append(logits)
        batch, dim, height, width = mask_features.shape
        pixels = mask_features.flatten(2).transpose(1, 2)
        pixel_position = sine_position_encoding(height, width, dim // 2, mask_features.device)
        pixel_position = pixel_position.flatten(2).transpose(1, 2).to(pixels.dtype)
        for layer in self.decoder_layers:
            pixels = layer(pixels, pixel_position, hidden, position)
        refined = pixels.transpose(1, 2).reshape(batch, dim, height, width)
        return self.predict_masks(hidden, refined), auxiliary
