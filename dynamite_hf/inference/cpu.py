"""The CPU click decoder: DynaMITe's two stages computed faster on a CPU, the same function as the plain model.

`CpuClickDecoder(model)` takes a `DynamiteModel`'s weights and offers the model's inference interface
(`get_image_embeddings`, and `forward` / calling it with `image_embeddings` and clicks); `DynamitePredictor` picks
it for a float32 model on the CPU (`backend="auto"`). What it does differently, never what it computes (its tests
compare it with the plain model):

- Per image: the pixel decoder's deformable attention as one weighted gather-sum (`embedding_bag`) instead of
  `grid_sample` plus a stack of samples; its FFNs over row chunks, in place; and, once, everything of the
  interactive transformer that no click changes: the projected keys and values of the encoder's memory, and the
  mask features resized to each level (for the encoder's attention masks, below).
- Per click: the encoder's attention masks predicted at the levels' sizes from the resized mask features (the
  mask head is linear in the features, so `resize(embedding @ features) = embedding @ resize(features)` up to
  rounding), at most a quarter of the stride-4 pixels; the masked attention through
  `scaled_dot_product_attention` with one mask for all heads. The decoder, in which every stride-4 pixel attends
  to the few queries, runs block by block of pixels through all its layers and the mask head (a block's
  activations stay in the CPU's caches); its attention reassociated into two thin GEMMs while `heads x queries <
  dim`, its softmax in base 2 (`exp2` runs about 3x faster than `exp` here), its products through oneDNN's fused
  linears.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.dynamite.interactive_transformer import DynamiteDecoderLayer
from ..models.dynamite.modeling_dynamite import (
    DynamiteImageEmbeddings,
    DynamiteModel,
    DynamiteModelOutput,
    clicks_in_query_order,
    query_labels_of,
)
from ..models.dynamite.pixel_decoder import sine_position_encoding
from .feed_forward import ffn_in_chunks, onednn_ffn_weights, onednn_linear_weight


def gather_sum_deformable_attention(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    queries_per_chunk: int = 4096,
) -> Tensor:
    """`multi_scale_deformable_attention` (the pixel decoder's, by `grid_sample`) as one weighted gather-sum: each
    sample point contributes its four neighbouring pixels with weight (bilinear weight x attention weight), and
    `embedding_bag` sums them, so the `(batch * heads, head_dim, queries, levels * points)` stack of samples is
    never built. Same arguments and output; equal up to float rounding. The queries go `queries_per_chunk` at a time
    (each query's sum is its own), so the corner indices and weights of the whole map (about 250 MB for a paper
    preset at 800x1216) never exist at once."""
    batch, num_keys, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    table = value.transpose(1, 2).reshape(batch * num_heads * num_keys, head_dim)
    output = value.new_empty(batch, num_queries, num_heads * head_dim)
    for start in range(0, num_queries, queries_per_chunk):
        stop = min(start + queries_per_chunk, num_queries)
        indices, weights = _corner_rows_and_weights(
            num_keys, num_heads, spatial_shapes, sampling_locations[:, start:stop], attention_weights[:, start:stop]
        )
        summed = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
        output[:, start:stop] = summed.view(batch, stop - start, num_heads * head_dim)
    return output


def _corner_rows_and_weights(
    num_keys: int,
    num_heads: int,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor]:
    """For `gather_sum_deformable_attention`: per (image, query, head), the rows of the flattened value table of each
    sample point's four neighbouring pixels and their weights, `(batch * queries * heads, levels * points * 4)`."""
    batch, num_queries = sampling_locations.shape[:2]
    device, dtype = sampling_locations.device, sampling_locations.dtype
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)
    starts = torch.tensor([0] + [h * w for h, w in spatial_shapes[:-1]], dtype=dtype, device=device).cumsum(0)
    widths, heights = sizes[:, 0].view(1, 1, 1, -1, 1), sizes[:, 1].view(1, 1, 1, -1, 1)
    # Pixel coordinates exactly as grid_sample unnormalises its grid (2 * location - 1).
    pixel = ((2 * sampling_locations - 1 + 1) * sizes[None, None, None, :, None, :] - 1) / 2
    x, y = pixel[..., 0], pixel[..., 1]
    x0, y0 = x.floor(), y.floor()
    x1, y1 = x0 + 1, y0 + 1
    # Integer-valued float arithmetic is exact here (indices < 2**24), so the flat row of each corner is formed in
    # float and converted once. Corners outside the map get weight 0 (zero padding).
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
    return indices, weights


def _as_pixel_rows(mask_features: Tensor) -> Tensor:
    """`mask_features` `(batch, dim, h, w)` as a view of `(batch, h * w, dim)` rows in memory (a copy unless it is
    one already): the decoder copies blocks of pixel rows on every click, a plain copy then instead of a
    transposing one."""
    batch, dim, height, width = mask_features.shape
    rows = mask_features.flatten(2).transpose(1, 2).contiguous()
    return rows.transpose(1, 2).view(batch, dim, height, width)


def _plus_position(rows: Tensor, position_y: Tensor, position_x: Tensor) -> Tensor:
    """`rows` `(batch, block_height * width, dim)`, whole rows of the stride-4 map, plus their sine encoding: per
    pixel `[position_y[row], position_x[column]]` (`(block_height, dim / 2)` and `(width, dim / 2)`)."""
    batch, pixels, dim = rows.shape
    block_height, half = position_y.shape
    grid = rows.view(batch, block_height, -1, dim)
    output = torch.empty_like(grid)
    torch.add(grid[..., :half], position_y[:, None], out=output[..., :half])
    torch.add(grid[..., half:], position_x, out=output[..., half:])
    return output.view(batch, pixels, dim)


@dataclass
class CpuImageEmbeddings(DynamiteImageEmbeddings):
    """`DynamiteImageEmbeddings` plus what no click changes, computed once per image by `CpuClickDecoder`.

    Attributes:
        encoder_keys, encoder_values: per encoder layer, the projected memory of the level it attends to,
            `(batch, heads, level_pixels, head_dim)`.
        level_mask_features: the mask features resized (bilinear) to each level's size, `(batch, dim, h, w)`.
    """

    encoder_keys: tuple[Tensor, ...] | None = None
    encoder_values: tuple[Tensor, ...] | None = None
    level_mask_features: tuple[Tensor, ...] | None = None

    def nbytes(self) -> int:
        storages = {}
        tensors = (
            self.mask_features,
            *self.multi_scale_features,
            *self.encoder_keys,
            *self.encoder_values,
            *self.level_mask_features,
        )
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


@dataclass
class _FewKeysFactors:
    """What the decoder's reassociated attention needs of the clicks, once per click for every block of pixels:
    `scores = x @ score_weight + score_bias` in base 2 (both multiplied by log2(e)) and `output = softmax(scores) @
    output_weight` (the output bias folded in)."""

    score_weight: Tensor  # (batch, dim, heads * keys)
    score_bias: Tensor  # (batch, heads * keys)
    output_weight: Tensor  # (batch, heads * keys, dim)
    onednn_score_weights: list[Tensor] | None  # per image, score_weight^T reordered for oneDNN; None: torch.addmm


@dataclass
class _ProjectedKeys:
    """The standard attention's keys and values of the clicks, `(batch, heads, keys, head_dim)`."""

    keys: Tensor
    values: Tensor


class _ReorderedWeights:
    """Weights reordered for oneDNN (`onednn_ffn_weights`), kept between clicks while the weights they came from are
    unchanged: the same storage (held here, so that no other tensor can take its place), offset and version
    counter (which every in-place change, `load_state_dict` or an optimizer step, advances)."""

    def __init__(self, weights: tuple[Tensor, ...], rows: int, reordered: tuple[Tensor, Tensor] | None) -> None:
        self.stamps = [(weight.untyped_storage(), weight.storage_offset(), weight._version) for weight in weights]
        self.rows = rows
        self.reordered = reordered

    def matches(self, weights: tuple[Tensor, ...], rows: int) -> bool:
        return rows == self.rows and all(
            weight.untyped_storage().data_ptr() == storage.data_ptr()
            and (weight.storage_offset(), weight._version) == (offset, version)
            for weight, (storage, offset, version) in zip(weights, self.stamps, strict=True)
        )


class CpuClickDecoder:
    """A `DynamiteModel`'s inference, computed faster on a CPU (see the module docstring); its weights are the
    model's own (nothing is copied, so a change of the model's weights shows at the next call; the decoder FFNs'
    weights reordered for oneDNN are kept between clicks while the weights are unchanged).

    Args:
        model: a float32 `DynamiteModel` on the CPU (possibly with int8 FFN layers, `dynamite_hf.inference.int8`).
        use_onednn: run float32 products through oneDNN's fused linears where this torch has them.
        block_rows: stride-4 pixels per block of the decoder, at most (blocks hold whole rows of the map; at least one).
    """

    def __init__(self, model: DynamiteModel, use_onednn: bool = True, block_rows: int = 4096) -> None:
        if not isinstance(model, DynamiteModel):
            raise TypeError(f"model must be a DynamiteModel, got {type(model).__name__}")
        if model.device.type != "cpu":
            raise ValueError(f"the CPU click decoder runs models on the CPU; this one is on {model.device}")
        self.model = model.eval()
        self.use_onednn = use_onednn
        self.block_rows = block_rows
        self._reordered_ffn: dict[int, _ReorderedWeights] = {}

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def eval(self) -> CpuClickDecoder:
        return self

    # -- per image ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def get_image_embeddings(self, pixel_values: Tensor) -> CpuImageEmbeddings:
        """As `DynamiteModel.get_image_embeddings`, plus what no click changes."""
        model = self.model
        model._check_pixel_values(pixel_values)
        features = [feature.float() for feature in model.backbone(pixel_values)]
        decoder = model.pixel_decoder
        hidden, position, reference_points, shapes = decoder.encoder_inputs(features)
        for layer in decoder.encoder_layers:
            attention = layer.self_attn
            value, locations, weights = attention.sampling(hidden + position, reference_points, hidden, shapes)
            attended = attention.output_proj(gather_sum_deformable_attention(value, shapes, locations, weights))
            # The same sums in place: memory bandwidth is the limit here.
            hidden = layer.norm1(attended.add_(hidden))
            hidden = ffn_in_chunks(
                hidden, layer.linear1, layer.linear2, layer.norm2, overwrite_input=True, use_onednn=self.use_onednn
            )
        del position
        mask_features, multi_scale_features = decoder.decode_levels(hidden, shapes, features)
        # The backbone's maps (117 MB for R50 at 800x1216) are not needed for what is cached next.
        del features, hidden
        level_mask_features = self._level_mask_features(mask_features, multi_scale_features)
        # Rebinding frees the decoder's own map before the encoder's keys and values are made: at most one extra
        # map exists at a time.
        mask_features = _as_pixel_rows(mask_features)
        return self._with_click_independent(mask_features, tuple(multi_scale_features), level_mask_features)

    @torch.inference_mode()
    def prepare(self, embeddings: DynamiteImageEmbeddings) -> CpuImageEmbeddings:
        """The model's image embeddings plus the keys and values of every encoder layer's memory and the mask
        features at each level's size."""
        level_mask_features = self._level_mask_features(embeddings.mask_features, embeddings.multi_scale_features)
        return self._with_click_independent(
            _as_pixel_rows(embeddings.mask_features), tuple(embeddings.multi_scale_features), level_mask_features
        )

    @staticmethod
    def _level_mask_features(mask_features: Tensor, multi_scale_features: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """The mask features resized (bilinear) to each level's size, for the encoder's attention masks."""
        return tuple(
            F.interpolate(mask_features, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            for feature in multi_scale_features
        )

    def _with_click_independent(
        self, mask_features: Tensor, multi_scale_features: tuple[Tensor, ...], level_mask_features: tuple[Tensor, ...]
    ) -> CpuImageEmbeddings:
        """The embeddings with the keys and values of every encoder layer's memory."""
        transformer = self.model.interactive_transformer
        levels = transformer.levels(multi_scale_features)
        keys, values = [], []
        for index, layer in enumerate(transformer.encoder_layers):
            source, position = levels[index % transformer.num_levels]
            attention = layer.cross_attention.attention
            keys.append(attention.split_heads(attention.k_proj(source + position)))
            values.append(attention.split_heads(attention.v_proj(source)))
        return CpuImageEmbeddings(
            mask_features=mask_features,
            multi_scale_features=multi_scale_features,
            encoder_keys=tuple(keys),
            encoder_values=tuple(values),
            level_mask_features=level_mask_features,
        )

    # -- per click ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        input_timestamps: Tensor | None = None,
        image_embeddings: DynamiteImageEmbeddings | None = None,
        reshaped_input_sizes: Tensor | None = None,
        original_sizes: Tensor | None = None,
    ) -> DynamiteModelOutput:
        """As `DynamiteModel.forward` (the same arguments; no auxiliary logits: this is inference)."""
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Give exactly one of pixel_values (a new image) or image_embeddings (cached features)")
        if input_points is None or input_labels is None:
            raise ValueError("input_points and input_labels are required: at least one click on an instance")
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        elif not isinstance(image_embeddings, CpuImageEmbeddings):
            image_embeddings = self.prepare(image_embeddings)
        points, labels, timestamps = clicks_in_query_order(
            image_embeddings, input_points, input_labels, input_timestamps, reshaped_input_sizes
        )
        pred_masks = self.query_logits(image_embeddings, points, labels, timestamps)
        return DynamiteModelOutput(
            pred_masks=pred_masks,
            query_labels=query_labels_of(labels, pred_masks.shape[1]),
            image_embeddings=image_embeddings,
        )

    __call__ = forward

    def query_logits(
        self, embeddings: CpuImageEmbeddings, points: Tensor, labels: Tensor, timestamps: Tensor
    ) -> Tensor:
        """`DynamiteInteractiveTransformer.forward`'s `pred_masks` for clicks in query order."""
        transformer = self.model.interactive_transformer
        hidden, position = transformer.click_queries(
            embeddings.multi_scale_features, points, labels, timestamps, embeddings.padded_size
        )
        for index, layer in enumerate(transformer.encoder_layers):
            level = index % transformer.num_levels
            # The attention mask from the prediction at the level's size (see the module docstring).
            blocked = transformer.predict_masks(hidden, embeddings.level_mask_features[level]).sigmoid().flatten(2)
            blocked = blocked < 0.5
            allowed = ~(blocked & ~blocked.all(-1, keepdim=True))[:, None]
            cross = layer.cross_attention
            attention = cross.attention
            # The queries scaled before the product, as `eager_attention_forward` (and the original) do.
            queries = attention.split_heads(attention.q_proj(hidden + position)) * attention.scaling
            attended = F.scaled_dot_product_attention(
                queries, embeddings.encoder_keys[index], embeddings.encoder_values[index], attn_mask=allowed, scale=1.0
            )
            batch, _, num_queries, _ = attended.shape
            attended = attention.out_proj(attended.transpose(1, 2).reshape(batch, num_queries, -1))
            hidden = layer.ffn(layer.self_attention(cross.norm(hidden + attended), position))
        if len(transformer.decoder_layers) == 0:
            return transformer.predict_masks(hidden, embeddings.mask_features)
        logits, exact = self._decode_in_blocks(embeddings, hidden, hidden + position, base2=True)
        if not exact:  # a power of 2 beyond float32's range: the decoder again through torch.softmax
            logits, _ = self._decode_in_blocks(embeddings, hidden, hidden + position, base2=False)
        return logits

    def _decode_in_blocks(
        self, embeddings: CpuImageEmbeddings, hidden: Tensor, query_keys: Tensor, base2: bool
    ) -> tuple[Tensor, bool]:
        """The decoder layers and the mask head, one block of pixels at a time (each pixel attends to the queries,
        not to other pixels, so a block can go through every layer before the next block). Returns the logits
        `(batch, queries, h, w)` and, with `base2`, whether every head's sum of powers of 2 stayed in float32's
        range (checked once, at the end: no device sync per block); else True."""
        transformer = self.model.interactive_transformer
        mask_features = embeddings.mask_features
        batch, dim, height, width = mask_features.shape
        pixels = mask_features.flatten(2).transpose(1, 2)  # (batch, h * w, dim), contiguous as `prepare` stores it
        embedding = transformer.mask_embed(transformer.layer_norm(hidden))
        block_height = max(1, self.block_rows // width)  # blocks of whole rows of the map (below)
        step = block_height * width
        layers = list(transformer.decoder_layers)
        factors = [self._click_factors(layer, query_keys, hidden, step) for layer in layers]
        ffn_weights = [
            self._ffn_weights(index, layer, batch * step) if self.use_onednn and pixels.dtype == torch.float32 else None
            for index, layer in enumerate(layers)
        ]
        # The mask head through oneDNN too: its few output columns (the queries) run 1.2-3.6x faster there than in
        # `bmm` (4,096 x 256 rows times 256 x 12-20).
        head_weights = [onednn_linear_weight(image, step) for image in embedding] if self.use_onednn else [None]
        if any(weight is None for weight in head_weights):
            head_weights = None
        # Blocks of whole rows of the stride-4 map: the sine encoding is [pos_y, pos_x], so a block's encoding is two
        # tables broadcast (`_plus_position`), never a map of the block's own.
        half = dim // 2
        position_y = sine_position_encoding(height, 1, half, pixels.device)[0, :half, :, 0].t().to(pixels.dtype)
        position_x = sine_position_encoding(1, width, half, pixels.device)[0, half:, 0, :].t().to(pixels.dtype)
        sums_low = pixels.new_full((), math.inf)
        sums_high = pixels.new_zeros(())
        logits = pixels.new_empty(batch, height * width, embedding.shape[1])
        for top in range(0, height, block_height):
            bottom = min(top + block_height, height)
            start, stop = top * width, bottom * width
            rows = pixels[:, start:stop].clone(memory_format=torch.contiguous_format)  # the layers write into it
            for layer, layer_factors, weights in zip(layers, factors, ffn_weights, strict=True):
                row_inputs = _plus_position(rows, position_y[top:bottom], position_x)
                attended = self._attend_rows(layer, rows, row_inputs, layer_factors, base2, (sums_low, sums_high))
                rows = ffn_in_chunks(
                    layer.cross_attention.norm(attended),
                    layer.ffn.linear1,
                    layer.ffn.linear2,
                    layer.ffn.norm,
                    overwrite_input=True,
                    onednn_weights=weights,
                    use_onednn=self.use_onednn,
                )
            if head_weights is None:
                logits[:, start:stop] = torch.bmm(rows, embedding.transpose(1, 2))
                continue
            for image, weight in enumerate(head_weights):
                logits[image, start:stop] = torch.ops.mkldnn._linear_pointwise(
                    rows[image], weight, None, "none", [], ""
                )
        exact = not base2 or bool((sums_low >= 2.0**-100) & (sums_high < math.inf))
        return logits.transpose(1, 2).reshape(batch, -1, height, width), exact

    def _ffn_weights(self, index: int, layer: DynamiteDecoderLayer, rows: int) -> tuple[Tensor, Tensor] | None:
        """`onednn_ffn_weights` of decoder layer `index`'s FFN for products of `rows` rows, reordered again only
        when its weights changed (a reorder costs about as much as a block's product)."""
        linears = (layer.ffn.linear1, layer.ffn.linear2)
        if not all(type(linear) is nn.Linear for linear in linears):  # int8 layers (`int8.py`) keep their own
            return None
        weights = tuple(linear.weight for linear in linears)
        if any(weight.is_inference() for weight in weights):  # no version counter to tell a change: not kept
            return onednn_ffn_weights(*linears, rows)
        kept = self._reordered_ffn.get(index)
        if kept is None or not kept.matches(weights, rows):
            kept = _ReorderedWeights(weights, rows, onednn_ffn_weights(layer.ffn.linear1, layer.ffn.linear2, rows))
            self._reordered_ffn[index] = kept
        return kept.reordered

    def _click_factors(
        self, layer: DynamiteDecoderLayer, query_keys: Tensor, query_values: Tensor, rows: int
    ) -> _FewKeysFactors | _ProjectedKeys:
        """What a decoder layer's attention needs of the clicks, once per click. While `heads x queries < dim`,
        the reassociated form: the scores `(W_q x + b_q) . K / sqrt(d)` are `x . (W_q^T K) / sqrt(d) + b_q . K /
        sqrt(d)`, and the output `W_o (A V) + b_o` is `A (V W_o^T) + b_o`: two GEMMs of inner size `heads x
        queries` over the pixels instead of two of size `dim` plus per-head reshapes. Each head's weights sum to 1,
        so `b_o / heads` added to every row of `V W_o^T` adds `b_o` once."""
        attention = layer.cross_attention.attention
        heads, head_dim = attention.num_heads, attention.head_dim
        batch, num_queries, dim = query_keys.shape
        if heads * num_queries >= dim:
            return _ProjectedKeys(
                attention.split_heads(attention.k_proj(query_keys)),
                attention.split_heads(attention.v_proj(query_values)),
            )
        keys = attention.k_proj(query_keys).view(batch, num_queries, heads, head_dim) * attention.scaling
        values = attention.v_proj(query_values).view(batch, num_queries, heads, head_dim)
        w_q = attention.q_proj.weight.view(heads, head_dim, dim)
        w_o = attention.out_proj.weight.view(dim, heads, head_dim)
        score_bias = torch.einsum("hd,bqhd->bhq", attention.q_proj.bias.view(heads, head_dim), keys)
        score_weight = torch.einsum("hdc,bqhd->bchq", w_q, keys).reshape(batch, dim, heads * num_queries)
        output_weight = torch.einsum("chd,bqhd->bhqc", w_o, values).reshape(batch, heads * num_queries, dim)
        # In base 2 for `exp2`: softmax(s) = 2^(s log2 e) / sum.
        score_weight, score_bias = score_weight * math.log2(math.e), score_bias.reshape(batch, -1) * math.log2(math.e)
        onednn = [onednn_linear_weight(weight.t(), rows) for weight in score_weight] if self.use_onednn else [None]
        return _FewKeysFactors(
            score_weight,
            score_bias,
            output_weight + attention.out_proj.bias / heads,
            None if any(weight is None for weight in onednn) else onednn,
        )

    @staticmethod
    def _attend_rows(
        layer: DynamiteDecoderLayer,
        rows: Tensor,
        row_inputs: Tensor,
        factors: _FewKeysFactors | _ProjectedKeys,
        base2: bool,
        sums_range: tuple[Tensor, Tensor],
    ) -> Tensor:
        """`rows + attention(row_inputs)`, into `rows`; `sums_range` (running min and max of the base-2 sums, 0-d
        tensors) is updated in place."""
        attention = layer.cross_attention.attention
        if isinstance(factors, _ProjectedKeys):
            queries = attention.split_heads(attention.q_proj(row_inputs))
            attended = F.scaled_dot_product_attention(queries, factors.keys, factors.values, scale=attention.scaling)
            batch, _, length, _ = attended.shape
            return rows.add_(attention.out_proj(attended.transpose(1, 2).reshape(batch, length, -1)))
        heads = attention.num_heads
        for image in range(rows.shape[0]):
            if factors.onednn_score_weights is not None:
                scores = torch.ops.mkldnn._linear_pointwise(
                    row_inputs[image], factors.onednn_score_weights[image], factors.score_bias[image], "none", [], ""
                )
            else:
                scores = torch.addmm(factors.score_bias[image], row_inputs[image], factors.score_weight[image])
            if base2:
                # Without the usual shift by each head's maximum: the caller checks once that every head's sum was
                # finite and at least 2^-100 (no power overflowed, and those that underflowed weigh < 2^-49).
                powers = scores.exp2_().view(scores.shape[0], heads, -1)
                sums = powers.sum(-1, keepdim=True)
                low, high = torch.aminmax(sums)
                torch.minimum(sums_range[0], low, out=sums_range[0])
                torch.maximum(sums_range[1], high, out=sums_range[1])
                weights = powers.div_(sums).view(scores.shape[0], -1)
            else:
                weights = scores.mul_(math.log(2.0)).view(scores.shape[0], heads, -1).softmax(-1)
                weights = weights.view(scores.shape[0], -1)
            rows[image].addmm_(weights, factors.output_weight[image])
        return rows
