"""The interactive transformer: click queries, their positional encodings, the masked-attention encoder, the
reverse cross-attention decoder and the mask head (spec section 1.4).

Everything that does not depend on the clicks (keys and values of the image memory for every encoder layer,
the positional encodings, the first decoder layer's pixel-query projection) is computed once per image by
`DynamiteInteractiveTransformer.prepare_memory`; a click then runs only the query-dependent part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...clicks import Click
from ...inference.feed_forward import ffn_in_chunks, onednn_ffn_weights, onednn_linear_weight
from .configuration_dynamite import DynamiteConfig
from .pixel_decoder import sine_position_encoding


def click_position_encoding(coords: Tensor, num_feats: int) -> Tensor:
    """Sine encoding of normalised click coordinates, `(..., num_feats)` per coordinate.

    `coords` `(...)` holds values in [0, 1] for clicks and -1 for padding slots, whose angles are forced to
    0 (sin) and pi/2 (cos) as the original does, which gives an (almost exactly) zero vector.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = (coords * (2 * math.pi))[..., None] / dim_t
    padding = (coords < 0)[..., None]
    even = torch.where(padding, torch.zeros_like(angles[..., 0::2]), angles[..., 0::2])
    odd = torch.where(padding, torch.full_like(angles[..., 1::2], math.pi / 2), angles[..., 1::2])
    return torch.stack((even.sin(), odd.cos()), dim=-1).flatten(-2)


@dataclass
class DynamiteQueryBatch:
    """The click queries of a batch, padded to the same count (padding slots are background-like).

    Attributes:
        coords_yx: `(batch, num_clicks, 2)` float32 click positions in the model frame (pixels), padding 0.
        normalized: `(batch, num_clicks, 3)` float32 `(row / Hp, col / Wp, t / T)`, padding slots -1.
        is_padding: `(batch, num_clicks)` bool.
        num_clicks_per_instance: per image, the click count of each instance.
    """

    coords_yx: Tensor
    normalized: Tensor
    is_padding: Tensor
    num_clicks_per_instance: list[list[int]]

    @classmethod
    def from_clicks(
        cls,
        ordered_clicks: Sequence[Sequence[Click]],
        num_clicks_per_instance: list[list[int]],
        padded_size: tuple[int, int],
        temporal_norm: int,
        max_timestamp: Sequence[int] | None,
        device: torch.device,
    ) -> DynamiteQueryBatch:
        height, width = padded_size
        length = max(len(c) for c in ordered_clicks)
        coords, normalized, padding = [], [], []
        for index, clicks in enumerate(ordered_clicks):
            latest = max(c.timestamp for c in clicks) if max_timestamp is None else max_timestamp[index]
            norm_t = max(latest, temporal_norm)
            pad = length - len(clicks)
            coords.append([[c.row, c.col] for c in clicks] + [[0.0, 0.0]] * pad)
            # Divided in Python (float64) before the float32 tensor, as the original does.
            normalized.append(
                [[c.row / height, c.col / width, c.timestamp / norm_t] for c in clicks] + [[-1.0, -1.0, -1.0]] * pad
            )
            padding.append([False] * len(clicks) + [True] * pad)
        return cls(
            coords_yx=torch.tensor(coords, dtype=torch.float32, device=device),
            normalized=torch.tensor(normalized, dtype=torch.float32, device=device),
            is_padding=torch.tensor(padding, dtype=torch.bool, device=device),
            num_clicks_per_instance=num_clicks_per_instance,
        )


class DynamiteAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections, computed as `torch.nn.MultiheadAttention` does
    on its explicit path (scale the queries, `bmm`, softmax, `bmm`), batch-first.

    Keys and values may be given already projected (`project_memory`), so that an image memory is projected
    once per image and not once per click.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """`(batch, length, dim)` -> `(batch * heads, length, head_dim)`."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2).reshape(-1, length, self.head_dim)

    def project_queries(self, query: Tensor) -> Tensor:
        """Projected, scaled and head-split queries, `(batch * heads, length, head_dim)`."""
        return self.split_heads(self.q_proj(query)) * math.sqrt(1.0 / self.head_dim)

    def project_memory(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Projected, head-split keys and values, each `(batch * heads, length, head_dim)`."""
        return self.split_heads(self.k_proj(key)), self.split_heads(self.v_proj(value))

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, blocked: Tensor | None = None) -> Tensor:
        """Attention from projected inputs; `blocked` `(batch, q_len, k_len)` is True where a query may not look
        (the same for every head). Returns `(batch, q_len, dim)` after the output projection.

        Inference goes through `F.scaled_dot_product_attention` (the same function up to float rounding): its CPU
        kernel reads the keys and values once in blocks and never holds the scores, 2.8-3.3x faster than the
        explicit form on the encoder's attention to a level of 3,800-15,200 pixels (a paper preset at 800x1216)."""
        batch_heads, length, head_dim = queries.shape
        batch = batch_heads // self.num_heads
        if not torch.is_grad_enabled():
            split = (batch, self.num_heads, -1, head_dim)
            attended = F.scaled_dot_product_attention(
                queries.view(split),
                keys.view(split),
                values.view(split),
                attn_mask=None if blocked is None else ~blocked[:, None],
                scale=1.0,  # `project_queries` scaled them
            )
        else:
            scores = torch.bmm(queries, keys.transpose(1, 2))
            if blocked is not None:  # in place: the scores are this call's own
                scores.view(batch, self.num_heads, length, -1).masked_fill_(blocked[:, None], float("-inf"))
            attended = torch.bmm(scores.softmax(-1), values).view(batch, self.num_heads, length, head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, self.num_heads * head_dim))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        return self.attend(self.project_queries(query), *self.project_memory(key, value), blocked)


class DynamiteCrossAttentionLayer(nn.Module):
    """Post-norm cross-attention block: `norm(x + attention(x + x_pos, memory + memory_pos, memory))`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = DynamiteAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)


class DynamiteSelfAttentionLayer(nn.Module):
    """Post-norm self-attention among the queries (no key-padding mask: padding slots take part)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = DynamiteAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden: Tensor, position: Tensor) -> Tensor:
        with_position = hidden + position
        return self.norm(hidden + self.attention(with_position, with_position, hidden))


class DynamiteFeedForward(nn.Module):
    """Post-norm FFN block with ReLU."""

    # Inference over row chunks (`ffn_in_chunks`); an exported graph, whose row count is symbolic, pins False.
    chunked: bool = True

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(
        self, hidden: Tensor, overwrite_input: bool = False, onednn_weights: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """`overwrite_input`: in inference, `hidden` may be overwritten (the caller no longer needs it);
        `onednn_weights`: the linears' weights reordered once for many calls (`onednn_ffn_weights`)."""
        if torch.is_grad_enabled():
            return self.norm(hidden + self.linear2(F.relu(self.linear1(hidden))))
        # Inference (the decoder runs this over every stride-4 pixel): the same sums in place, over row chunks,
        # so that the (rows, ffn_dim) activation never exists whole.
        if self.chunked:
            return ffn_in_chunks(hidden, self.linear1, self.linear2, self.norm, overwrite_input, onednn_weights)
        return self.norm(self.linear2(self.linear1(hidden).relu_()).add_(hidden))


class DynamiteEncoderLayer(nn.Module):
    """Masked cross-attention to one pixel-decoder level, self-attention among the queries, FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attention = DynamiteCrossAttentionLayer(dim, num_heads)
        self.self_attention = DynamiteSelfAttentionLayer(dim, num_heads)
        self.ffn = DynamiteFeedForward(dim, ffn_dim)

    def forward(
        self, hidden: Tensor, position: Tensor, memory_keys: Tensor, memory_values: Tensor, blocked: Tensor
    ) -> Tensor:
        cross = self.cross_attention
        attended = cross.attention.attend(
            cross.attention.project_queries(hidden + position), memory_keys, memory_values, blocked
        )
        hidden = cross.norm(hidden + attended)
        return self.ffn(self.self_attention(hidden, position), overwrite_input=True)


def softmax_base2_(scores: Tensor, heads: int) -> Tensor | None:
    """Each head's softmax in base 2, `2^s / sum(2^s)` (= `softmax(s * ln 2)`), of `scores` `(rows, heads *
    keys)`, computed in place. The decoder's blocks give their scores already multiplied by log2(e), so this is
    their softmax: PyTorch's CPU `exp2` runs about 3x faster than its `exp`, and its softmax over a last axis of
    11-20 keys is slow, so `exp2`, a sum and a division take 0.5-0.7x the time of `softmax` on a decoder
    block's scores (and 0.1x at 11 keys, where no padding is then needed).

    Without the usual shift by each head's maximum, so float32 / float64 scores are checked afterwards: every
    head's sum of powers must be finite and at least 2^-100 (no power overflowed, the largest is a normal
    number, and those that underflowed weigh less than 2^-49). Returns None where they are not (`scores` is
    then spent: the caller computes them again for `softmax_base2_fallback`). Other dtypes go through
    `torch.softmax` (the same function, up to rounding)."""
    if scores.dtype not in (torch.float32, torch.float64):
        return softmax_base2_fallback(scores, heads)
    rows = scores.shape[0]
    powers = scores.exp2_().view(rows, heads, -1)
    sums = powers.sum(-1, keepdim=True)
    low, high = torch.aminmax(sums)
    if not (low.item() >= 2.0**-100 and high.item() < math.inf):
        return None
    return powers.div_(sums).view(rows, -1)


def softmax_base2_fallback(scores: Tensor, heads: int) -> Tensor:
    """`softmax_base2_` through `torch.softmax`, for any scores (scaled in place)."""
    return heads_softmax(scores.mul_(math.log(2.0)), heads)


def heads_softmax(scores: Tensor, heads: int) -> Tensor:
    """Softmax over each head's keys of `scores` `(..., heads * keys)`."""
    return scores.view(*scores.shape[:-1], heads, -1).softmax(-1).view(scores.shape)


@dataclass
class FewKeysFactors:
    """What the decoder's reassociated attention (`DynamiteDecoderLayer._attend_few_keys`) needs of the clicks
    in eager inference, computed once per click for every block of pixels (`DynamiteDecoderLayer.click_factors`):
    `scores = x @ score_weight + score_bias` in base 2 (both multiplied by log2(e), for `softmax_base2_`) and
    `output = softmax(scores) @ output_weight` (the output bias folded in). No padded keys."""

    score_weight: Tensor  # (batch, dim, heads * keys)
    score_bias: Tensor  # (batch, heads * keys)
    output_weight: Tensor  # (batch, heads * keys, dim)
    onednn_score_weights: list[Tensor] | None  # per image, score_weight^T reordered for oneDNN; None: torch.addmm


class DynamiteDecoderLayer(nn.Module):
    """Reverse cross-attention: every stride-4 pixel attends to the queries; then an FFN."""

    # Which attention to compute: None picks per call by size (below); an exported graph, whose query count is
    # symbolic, pins one (both are the same function).
    use_few_keys_attention: bool | None = None
    # The few-keys path (training, the layer-by-layer form) pads the key axis up to this many keys with keys that
    # score -inf (weight exactly 0): PyTorch's CPU softmax over a last axis of 9-15 elements runs 5-10x slower
    # than over 16 or more (which are all fast), while the two GEMMs grow with every key. An exported graph pins
    # 0 (no padding), as its query count is symbolic; eager inference over blocks never pads (`softmax_base2_`).
    min_keys: int = 16

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attention = DynamiteCrossAttentionLayer(dim, num_heads)
        self.ffn = DynamiteFeedForward(dim, ffn_dim)

    def few_keys_weights(
        self, query_keys: Tensor, query_values: Tensor, min_keys: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The click-dependent factors of the reassociated attention (`_attend_few_keys`), computed once per click:
        `scores = pixel_inputs @ score_weight + score_bias` and `output = softmax(scores) @ output_weight + b_o`.

        Returns `score_weight` `(batch, dim, heads * keys)`, `score_bias` `(batch, 1, heads * keys)` and
        `output_weight` `(batch, heads * keys, dim)`, with the key axis padded up to `min_keys` (default: the
        layer's) by keys that score -inf (weight exactly 0).
        """
        attention = self.cross_attention.attention
        heads, head_dim = attention.num_heads, attention.head_dim
        batch, num_queries, dim = query_keys.shape
        scale = math.sqrt(1.0 / head_dim)
        keys = attention.k_proj(query_keys).view(batch, num_queries, heads, head_dim) * scale
        values = attention.v_proj(query_values).view(batch, num_queries, heads, head_dim)
        w_q = attention.q_proj.weight.view(heads, head_dim, dim)
        w_o = attention.out_proj.weight.view(dim, heads, head_dim)
        score_bias = torch.einsum("hd,bqhd->bhq", attention.q_proj.bias.view(heads, head_dim), keys)
        padding = max((self.min_keys if min_keys is None else min_keys) - num_queries, 0)
        if padding:
            # Zero keys and values, and a bias of -inf: the padded keys get a softmax weight of exactly 0.
            keys = F.pad(keys, (0, 0, 0, 0, 0, padding))
            values = F.pad(values, (0, 0, 0, 0, 0, padding))
            score_bias = F.pad(score_bias, (0, padding), value=float("-inf"))
            num_queries += padding
        # (batch, dim, heads * queries) and (batch, heads * queries): scores = x @ score_weight + score_bias.
        score_weight = torch.einsum("hdc,bqhd->bchq", w_q, keys).reshape(batch, dim, heads * num_queries)
        output_weight = torch.einsum("chd,bqhd->bhqc", w_o, values).reshape(batch, heads * num_queries, dim)
        return score_weight, score_bias.reshape(batch, 1, -1), output_weight

    def _attend_few_keys(
        self,
        pixel_inputs: Tensor,
        query_keys: Tensor,
        query_values: Tensor,
        residual: Tensor | None = None,
        overwrite_residual: bool = False,
    ) -> Tensor:
        """The same attention, reassociated for many pixels and few keys (exact up to float rounding).

        With `K` the projected keys of head h, the scores `(W_q x + b_q) . K / sqrt(d)` are
        `x . (W_q^T K) / sqrt(d) + b_q . K / sqrt(d)`, and the output `W_o (A V) + b_o` is `A (V W_o^T) + b_o`:
        two GEMMs of inner size `heads * num_queries` over the pixels instead of two of size `dim` plus the
        per-head reshapes, a gain while `heads * num_queries < dim`. Each head's weights sum to 1, so `b_o / heads`
        added to every row of `V W_o^T` adds `b_o` once: in inference the bias rides in the product.

        `residual` `(batch, num_pixels, dim)`: returns `residual + attention` from the same product (the GEMM
        adds its `C`), into `residual` itself with `overwrite_residual`: no full-size bias copy, no separate sum.
        """
        attention = self.cross_attention.attention
        score_weight, score_bias, output_weight = self.few_keys_weights(query_keys, query_values)
        weights = heads_softmax(torch.baddbmm(score_bias, pixel_inputs, score_weight), attention.num_heads)
        if residual is None:
            # Training keeps the bias as the GEMM's C. Folded in, it adds `g . b_o / heads` to the gradient of
            # every weight of a head, which the softmax's backward subtracts again: the same up to rounding (the
            # input's gradient 5.7e-7 from float64 against 5.0e-7), yet `tests/test_click_learning.py`'s short
            # run, sensitive to rounding, gave 77 % / 61 % / mIoU 0.32 with the fold, 99 % / 90 % / 0.66 without.
            return torch.baddbmm(attention.out_proj.bias, weights, output_weight)
        output_weight = output_weight + attention.out_proj.bias / attention.num_heads
        if overwrite_residual:
            return residual.baddbmm_(weights, output_weight)
        return torch.baddbmm(residual, weights, output_weight)

    def click_factors(
        self, query_keys: Tensor, query_values: Tensor, few_keys: bool, rows: int
    ) -> FewKeysFactors | tuple[Tensor, Tensor]:
        """Inference: what `forward_rows` needs of the clicks, computed once per click for every block of about
        `rows` rows. Few keys: `FewKeysFactors`; else the projected keys and values."""
        attention = self.cross_attention.attention
        if not few_keys:
            return attention.project_memory(query_keys, query_values)
        score_weight, score_bias, output_weight = self.few_keys_weights(query_keys, query_values, min_keys=0)
        score_weight, score_bias = score_weight * math.log2(math.e), score_bias[:, 0] * math.log2(math.e)
        onednn = [onednn_linear_weight(weight.t(), rows) for weight in score_weight]
        return FewKeysFactors(
            score_weight,
            score_bias,
            output_weight + attention.out_proj.bias / attention.num_heads,
            None if any(weight is None for weight in onednn) else onednn,
        )

    def _attend_rows(self, rows: Tensor, row_inputs: Tensor, factors: FewKeysFactors | tuple[Tensor, Tensor]) -> Tensor:
        """Inference: `rows + attention(row_inputs)` into `rows`, from `click_factors`. Few keys: the scores'
        product through oneDNN (bias fused; 1.1x `addmm` on a paper preset's blocks) where it applies."""
        attention = self.cross_attention.attention
        if not isinstance(factors, FewKeysFactors):
            return rows.add_(attention.attend(attention.project_queries(row_inputs), *factors))
        for image in range(rows.shape[0]):
            weights = softmax_base2_(self._block_scores(row_inputs[image], factors, image), attention.num_heads)
            if weights is None:  # beyond float32's range in base 2: the scores again, through torch.softmax
                weights = softmax_base2_fallback(
                    self._block_scores(row_inputs[image], factors, image), attention.num_heads
                )
            rows[image].addmm_(weights, factors.output_weight[image])
        return rows

    @staticmethod
    def _block_scores(inputs: Tensor, factors: FewKeysFactors, image: int) -> Tensor:
        """One image's base-2 scores `inputs @ score_weight + score_bias`, through oneDNN where it applies."""
        if factors.onednn_score_weights is not None:
            return torch.ops.mkldnn._linear_pointwise(
                inputs, factors.onednn_score_weights[image], factors.score_bias[image], "none", [], ""
            )
        return torch.addmm(factors.score_bias[image], inputs, factors.score_weight[image])

    def forward_rows(
        self,
        rows: Tensor,
        row_inputs: Tensor,
        factors: FewKeysFactors | tuple[Tensor, Tensor],
        onednn_weights: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Inference over a block of pixels (the layer treats every pixel on its own): `rows` `(batch, n, dim)`
        (overwritten) and `row_inputs` = rows + their position encoding, `factors` from `click_factors`,
        `onednn_weights` the FFN's weights reordered once for every block (`onednn_ffn_weights`)."""
        attended = self.cross_attention.norm(self._attend_rows(rows, row_inputs, factors))
        return self.ffn(attended, overwrite_input=True, onednn_weights=onednn_weights)

    def forward(
        self,
        pixels: Tensor,
        pixel_inputs: Tensor,
        query_keys: Tensor,
        query_values: Tensor,
        overwrite_pixels: bool = False,
    ) -> Tensor:
        """`pixels` `(batch, num_pixels, dim)` and `pixel_inputs` = pixels + their position encoding;
        `query_keys` (queries + query positions) and `query_values` (queries), `(batch, num_queries, dim)`.
        `overwrite_pixels`: in eager inference, `pixels` may be overwritten (the caller no longer needs it)."""
        cross = self.cross_attention
        attention = cross.attention
        few_keys = self.use_few_keys_attention
        if few_keys is None:
            few_keys = attention.num_heads * query_keys.shape[1] < pixels.shape[-1]
        if torch.is_grad_enabled():
            if few_keys:
                attended = self._attend_few_keys(pixel_inputs, query_keys, query_values)
            else:
                attended = attention(pixel_inputs, query_keys, query_values)
            return self.ffn(cross.norm(pixels + attended))
        if few_keys:
            # Eager inference (not an exported graph, `ffn.chunked`) may sum into `pixels` itself.
            overwrite = overwrite_pixels and self.ffn.chunked and pixels.is_contiguous()
            residual = self._attend_few_keys(pixel_inputs, query_keys, query_values, pixels, overwrite)
        else:
            residual = attention(pixel_inputs, query_keys, query_values).add_(pixels)
        return self.ffn(cross.norm(residual), overwrite_input=True)


class DynamiteMLP(nn.Module):
    """A stack of linear layers with ReLU between them."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


@dataclass
class DynamiteTransformerMemory:
    """The click-independent part of the interactive transformer for one batch of images.

    Attributes:
        encoder_keys / encoder_values: per encoder layer, the projected memory of the level it attends to,
            `(batch * heads, level_pixels, head_dim)`.
        level_sizes: `(height, width)` of the levels at strides 32, 16, 8.
        decoder_pixel_position: `(batch, num_pixels, dim)` sine encoding of the stride-4 map.
        decoder_first_inputs: `(batch, num_pixels, dim)` mask features + their position encoding, the
            attention input of the first decoder layer.
        level_mask_features: the mask features resized (bilinear) to each level's size, `(batch, dim, h, w)`.
            The mask head is linear in the mask features, so `resize(embedding @ features)` equals
            `embedding @ resize(features)` (up to float rounding): inference computes the attention masks of
            the encoder layers at the levels' sizes (at most 1/4 of the stride-4 pixels) from these.
    """

    encoder_keys: list[Tensor]
    encoder_values: list[Tensor]
    level_sizes: list[tuple[int, int]]
    decoder_pixel_position: Tensor | None
    decoder_first_inputs: Tensor | None
    level_mask_features: list[Tensor] | None = None


class DynamiteInteractiveTransformer(nn.Module):
    """Click queries -> per-query mask logits, given the pixel-decoder features of the image."""

    # Pixels per block of the decoder's eager inference (`_decode_in_blocks`).
    decoder_block_rows: int = 4096

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.num_heads = config.num_heads
        self.num_levels = 3
        self.positional_embedding = config.positional_embedding
        self.temporal_norm = config.temporal_norm
        self.num_static_bg_queries = config.num_static_bg_queries

        self.query_embed = nn.Parameter(torch.empty(dim).normal_())
        if self.num_static_bg_queries > 0:
            self.static_bg_pe = nn.Parameter(torch.empty(self.num_static_bg_queries, dim).normal_())
            self.static_bg_query = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.num_static_bg_queries, dim)))
        # Pads the click lists of a batch to equal length; zero and frozen, as in the original.
        self.bg_query = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.level_embed = nn.Embedding(self.num_levels, dim)
        self.query_projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        pe_inputs = {"spatio_temporal": 3 * (dim // 2), "spatial": dim, "temporal": dim, "none": 0}
        self.click_position_projection = (
            nn.Linear(pe_inputs[self.positional_embedding], dim) if self.positional_embedding != "none" else None
        )
        self.encoder_layers = nn.ModuleList(
            DynamiteEncoderLayer(dim, config.num_heads, config.encoder_ffn_dim) for _ in range(config.encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DynamiteDecoderLayer(dim, config.num_heads, config.decoder_ffn_dim) for _ in range(config.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim)
        self.mask_embed = DynamiteMLP(dim, 3)

    # -- per image ---------------------------------------------------------------------------------------
    def prepare_memory(
        self, multi_scale_features: Sequence[Tensor], mask_features: Tensor
    ) -> DynamiteTransformerMemory:
        """Project the image memory once: keys/values of every encoder layer, the decoder's pixel encodings."""
        sources, positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            _, dim, height, width = feature.shape
            sizes.append((height, width))
            sources.append(feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level][None, None, :])
            positions.append(sine_position_encoding(height, width, dim // 2, feature.device).flatten(2).transpose(1, 2))
        keys, values = [], []
        for index, layer in enumerate(self.encoder_layers):
            level = index % self.num_levels
            k, v = layer.cross_attention.attention.project_memory(sources[level] + positions[level], sources[level])
            keys.append(k)
            values.append(v)
        pixel_position = first_inputs = None
        if len(self.decoder_layers) > 0:
            _, dim, height, width = mask_features.shape
            pixel_position = sine_position_encoding(height, width, dim // 2, mask_features.device)
            pixel_position = pixel_position.flatten(2).transpose(1, 2)
            # Pixel-major (a sum led by the transposed view followed its layout): the decoder's blocks read rows
            # of it, and oneDNN's products copy rows that are not contiguous.
            first_inputs = (pixel_position + mask_features.flatten(2).transpose(1, 2)).contiguous()
        level_mask_features = [
            F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in sizes
        ]
        return DynamiteTransformerMemory(keys, values, sizes, pixel_position, first_inputs, level_mask_features)

    # -- per click ---------------------------------------------------------------------------------------
    def _click_descriptors(self, multi_scale_features: Sequence[Tensor], queries: DynamiteQueryBatch) -> Tensor:
        """Mean over the three levels of the features bilinearly sampled at each click, `(batch, clicks, dim)`."""
        height, width = multi_scale_features[-1].shape[-2:]
        # Normalised in float32 by the padded size (8 x the stride-8 map), then xy for grid_sample.
        scale = torch.tensor([float(height * 8), float(width * 8)], device=queries.coords_yx.device)
        grid = (queries.coords_yx / scale).flip(-1)[:, :, None, :]
        sampled = [
            F.grid_sample(feature, 2.0 * grid - 1.0, align_corners=False).squeeze(-1).transpose(1, 2)
            for feature in multi_scale_features
        ]
        descriptors = torch.mean(torch.stack(sampled, -1), dim=-1)
        return torch.where(queries.is_padding[..., None], self.bg_query.expand_as(descriptors), descriptors)

    def _query_position(self, queries: DynamiteQueryBatch) -> Tensor:
        batch, num_clicks, _ = queries.normalized.shape
        position = self.query_embed.expand(batch, num_clicks, -1)
        if self.click_position_projection is not None:
            dim = position.shape[-1]
            normalized = queries.normalized
            if self.positional_embedding == "temporal":
                encoding = click_position_encoding(normalized[..., 2], dim)
            else:
                parts = [normalized[..., 0], normalized[..., 1]]
                if self.positional_embedding == "spatio_temporal":
                    parts.append(normalized[..., 2])
                encoding = torch.cat([click_position_encoding(p, dim // 2) for p in parts], dim=-1)
            position = position + self.click_position_projection(encoding)
        return position

    def _predict(self, hidden: Tensor, mask_features: Tensor) -> Tensor:
        """Mask head: `(batch, queries, dim)` x `(batch, dim, h, w)` -> logits `(batch, queries, h, w)`."""
        embedding = self.mask_embed(self.layer_norm(hidden))
        batch, dim, height, width = mask_features.shape
        return torch.bmm(embedding, mask_features.view(batch, dim, height * width)).view(batch, -1, height, width)

    def _blocked(self, logits: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Attention mask `(batch, queries, level_pixels)` for the next encoder layer (every head alike): True
        where the prediction resized to `size` (already at the level's size if `size` is None) is background.
        Rows blocked everywhere are opened (Mask2Former's rule)."""
        resized = logits if size is None else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        return blocked & ~blocked.all(-1, keepdim=True)

    def forward(
        self,
        multi_scale_features: Sequence[Tensor],
        mask_features: Tensor,
        memory: DynamiteTransformerMemory,
        queries: DynamiteQueryBatch,
        output_auxiliary: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Per-query mask logits.

        Returns:
            `pred_masks` `(batch, num_queries, H/4, W/4)`, computed with the decoder-refined mask features, and
            (if `output_auxiliary`) the 10 earlier predictions (initial queries, then each encoder layer), made
            with the pixel-decoder mask features.
        """
        batch = mask_features.shape[0]
        hidden = self._click_descriptors(multi_scale_features, queries)
        position = self._query_position(queries)
        if self.num_static_bg_queries > 0:
            hidden = torch.cat((hidden, self.static_bg_query.expand(batch, -1, -1)), 1)
            position = torch.cat((position, self.static_bg_pe.expand(batch, -1, -1)), 1)
        hidden = self.query_projection(hidden)

        # Without the auxiliary predictions, the attention masks are predicted at the levels' sizes directly.
        at_levels = not output_auxiliary and memory.level_mask_features is not None

        def blocked_for(level: int) -> Tensor:
            if at_levels:
                return self._blocked(self._predict(hidden, memory.level_mask_features[level]))
            return self._blocked(logits, memory.level_sizes[level])

        auxiliary = []
        logits = None if at_levels else self._predict(hidden, mask_features)
        blocked = blocked_for(0)
        for index, layer in enumerate(self.encoder_layers):
            if output_auxiliary:
                auxiliary.append(logits)
            hidden = layer(hidden, position, memory.encoder_keys[index], memory.encoder_values[index], blocked)
            last = index == len(self.encoder_layers) - 1
            if output_auxiliary or (not last and not at_levels) or (last and len(self.decoder_layers) == 0):
                logits = self._predict(hidden, mask_features)
            if not last:
                blocked = blocked_for((index + 1) % self.num_levels)

        if len(self.decoder_layers) == 0:
            return logits, auxiliary
        if output_auxiliary:
            auxiliary.append(logits)
        query_keys = hidden + position
        if not torch.is_grad_enabled() and all(layer.ffn.chunked for layer in self.decoder_layers):
            return self._decode_in_blocks(mask_features, memory, hidden, query_keys), auxiliary
        _, dim, height, width = mask_features.shape
        pixels = mask_features.flatten(2).transpose(1, 2)
        pixel_inputs = memory.decoder_first_inputs
        for index, layer in enumerate(self.decoder_layers):
            if index > 0:
                pixel_inputs = pixels + memory.decoder_pixel_position
            pixels = layer(pixels, pixel_inputs, query_keys, hidden)
        refined = pixels.transpose(1, 2).reshape(batch, dim, height, width)
        return self._predict(hidden, refined), auxiliary

    def _decode_in_blocks(
        self, mask_features: Tensor, memory: DynamiteTransformerMemory, hidden: Tensor, query_keys: Tensor
    ) -> Tensor:
        """Eager inference of the decoder layers and the mask head, one block of pixels at a time.

        Each decoder layer treats every pixel on its own (the pixels attend to the queries, not to each other), so
        a block of `decoder_block_rows` pixels can go through every layer and the mask head before the next block:
        its activations (a few MB) stay in the CPU's caches instead of every layer streaming the whole
        `(pixels, dim)` map (62 MB for a paper preset at 800x1216) through memory several times. The same function
        as the layer-by-layer form, summed in the same order per pixel (equal up to GEMM blocking's rounding).
        """
        batch, dim, height, width = mask_features.shape
        features = mask_features.view(batch, dim, height * width)
        embedding = self.mask_embed(self.layer_norm(hidden))
        few_keys = [
            layer.use_few_keys_attention
            if layer.use_few_keys_attention is not None
            else layer.cross_attention.attention.num_heads * query_keys.shape[1] < dim
            for layer in self.decoder_layers
        ]
        factors = [
            layer.click_factors(query_keys, hidden, few, self.decoder_block_rows)
            for layer, few in zip(self.decoder_layers, few_keys, strict=True)
        ]
        logits = features.new_empty(batch, height * width, embedding.shape[1])
        step = self.decoder_block_rows
        ffn_weights = [
            onednn_ffn_weights(layer.ffn.linear1, layer.ffn.linear2, batch * step)
            if features.dtype == torch.float32
            else None
            for layer in self.decoder_layers
        ]
        # The mask head through oneDNN too: its few output columns (the queries) run 1.2-3.6x faster there than
        # in `bmm` (4,096 x 256 rows times 256 x 12-20).
        head_weights = [onednn_linear_weight(image_embedding, step) for image_embedding in embedding]
        if any(weight is None for weight in head_weights):
            head_weights = None
        for start in range(0, height * width, step):
            stop = min(start + step, height * width)
            rows = features[:, :, start:stop].transpose(1, 2).contiguous()
            row_inputs = memory.decoder_first_inputs[:, start:stop]
            for index, layer in enumerate(self.decoder_layers):
                if index > 0:
                    row_inputs = rows + memory.decoder_pixel_position[:, start:stop]
                rows = layer.forward_rows(rows, row_inputs, factors[index], ffn_weights[index])
            if head_weights is None:
                logits[:, start:stop] = torch.bmm(rows, embedding.transpose(1, 2))
                continue
            for image, weight in enumerate(head_weights):
                logits[image, start:stop] = torch.ops.mkldnn._linear_pointwise(
                    rows[image], weight, None, "none", [], ""
                )
        return logits.transpose(1, 2).reshape(batch, -1, height, width)
