"""The CPU click decoder (`dynamite_hf.inference.cpu`) computes what the plain model computes, on every backbone
family; its parts (the gather-sum deformable attention, the chunked FFNs, the base-2 softmax) each equal the
plain form they replace."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny import TINY_BACKBONES, click_inputs, tiny_model, two_instance_clicks
from torch.utils._python_dispatch import TorchDispatchMode

from dynamite_hf import Click, DynamiteImageEmbeddings
from dynamite_hf.inference import select_backend
from dynamite_hf.inference.cpu import CpuClickDecoder, CpuImageEmbeddings, gather_sum_deformable_attention
from dynamite_hf.inference.feed_forward import _onednn_available, ffn_in_chunks
from dynamite_hf.models.dynamite.pixel_decoder import multi_scale_deformable_attention


class _RecordedOps(TorchDispatchMode):
    """The names of the operators run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_onednn", [True, False])
@pytest.mark.parametrize("preset", list(TINY_BACKBONES))
def test_the_cpu_decoder_gives_the_plain_models_outputs(preset: str, use_onednn: bool) -> None:
    """Both stages, a first and a cached later click, over a batch of two images with unequal click counts."""
    model = tiny_model(preset)
    decoder = CpuClickDecoder(model, use_onednn=use_onednn, block_rows=37)  # blocks that do not divide the pixels
    pixel_values = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    clicks = click_inputs(two_instance_clicks(), [Click(0, 90.0, 120.0, 0, "model"), Click(None, 3.0, 4.0, 1, "model")])
    with torch.inference_mode():
        plain = model(pixel_values=pixel_values, **clicks)
        fast = decoder(pixel_values=pixel_values, **clicks)
        later = decoder(image_embeddings=fast.image_embeddings, **clicks)
    torch.testing.assert_close(fast.image_embeddings.mask_features, plain.image_embeddings.mask_features)
    for fast_level, plain_level in zip(
        fast.image_embeddings.multi_scale_features, plain.image_embeddings.multi_scale_features, strict=True
    ):
        torch.testing.assert_close(fast_level, plain_level, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.pred_masks, plain.pred_masks, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.query_labels, plain.query_labels)
    assert torch.equal(later.pred_masks, fast.pred_masks)


def test_a_change_of_the_weights_shows_at_the_next_click() -> None:
    """The decoder FFNs' weights reordered for oneDNN are kept between clicks, never past a change of the model's
    weights: in place (an optimizer step, `load_state_dict`) or a new tensor."""
    model = tiny_model(decoder_layers=2)
    original = copy.deepcopy(model.state_dict())
    decoder = CpuClickDecoder(model, block_rows=37)
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    clicks = click_inputs()
    ffn = model.interactive_transformer.decoder_layers[0].ffn

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return decoder(pixel_values=pixel_values, **clicks).pred_masks, model(pixel_values, **clicks).pred_masks

    first, _ = both()
    with torch.no_grad():
        ffn.linear1.weight.mul_(1.5)
    fast, plain = both()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, first, rtol=1e-3, atol=1e-3)
    ffn.linear2.weight = torch.nn.Parameter(-ffn.linear2.weight.detach())
    fast, plain = both()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    model.load_state_dict(original)
    fast, _ = both()
    torch.testing.assert_close(fast, first, rtol=0, atol=0)


def test_weights_made_in_inference_mode_are_reordered_every_click() -> None:
    """Inference tensors have no version counter: weights loaded under `torch.inference_mode()` are not kept, so an
    in-place change there still shows at the next click."""
    with torch.inference_mode():
        model = tiny_model(decoder_layers=2)
    decoder = CpuClickDecoder(model, block_rows=37)
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first = decoder(pixel_values=pixel_values, **click_inputs()).pred_masks
        model.interactive_transformer.decoder_layers[0].ffn.linear1.weight.mul_(1.5)
        fast = decoder(pixel_values=pixel_values, **click_inputs()).pred_masks
        plain = model(pixel_values, **click_inputs()).pred_masks
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, first, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("instances", [2, 30])  # few keys (heads x queries < dim), and the standard attention
def test_the_decoder_blocks_take_the_fast_products(instances: int) -> None:
    """With few keys each block takes its scores through oneDNN (one product per image, block and layer) and its
    softmax in base 2 (`exp2`); the mask head goes through oneDNN too; with many keys the standard attention."""
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2, decoder_layers=2)
    decoder = CpuClickDecoder(model, block_rows=37)
    clicks = click_inputs(
        [Click(k, 5.0 + 3 * k, 7.0 + 4 * k, k, "model") for k in range(instances)],
        [Click(k, 90.0 - 3 * k, 120.0 - 4 * k, k, "model") for k in range(instances)],
    )
    pixel_values = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        embeddings = decoder.get_image_embeddings(pixel_values)
        with _RecordedOps() as recorded:
            fast = decoder(image_embeddings=embeddings, **clicks).pred_masks
        plain = model(pixel_values=pixel_values, **clicks).pred_masks
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    few_keys = instances == 2
    assert ("aten.exp2_.default" in recorded.names) == few_keys
    if _onednn_available():
        # The FFNs' products come in pairs (`.default` with ReLU, `.binary` with the residual); the rest are the
        # scores' (few keys) and the mask head's, one per image and block.
        other_products = recorded.names.count("mkldnn._linear_pointwise.default") - recorded.names.count(
            "mkldnn._linear_pointwise.binary"
        )
        num_blocks = 96 // 4  # blocks of whole rows of the stride-4 map: 37 pixels hold one row of 32
        per_block = len(model.interactive_transformer.decoder_layers) + 1 if few_keys else 1
        assert other_products == 2 * num_blocks * per_block


def test_base2_softmax_beyond_float32_falls_back_to_torch_softmax() -> None:
    """The base-2 softmax skips the shift by each head's maximum; a click whose powers of 2 leave float32's range
    is decoded again through `torch.softmax` (checked once per click, no sync per block): still the plain
    model's logits."""
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2)
    decoder = CpuClickDecoder(model, block_rows=50)
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    calls = []
    original = decoder._decode_in_blocks
    decoder._decode_in_blocks = lambda *args, **kwargs: calls.append(kwargs["base2"]) or original(*args, **kwargs)
    with torch.inference_mode():
        normal = decoder(pixel_values=pixel_values, **click_inputs()).pred_masks
        assert calls == [True]
        for layer in model.interactive_transformer.decoder_layers:
            layer.cross_attention.attention.q_proj.weight.mul_(400.0)  # scores far beyond 2^128
            layer.cross_attention.attention.k_proj.weight.mul_(400.0)
        large = decoder(pixel_values=pixel_values, **click_inputs()).pred_masks
        plain = model(pixel_values=pixel_values, **click_inputs()).pred_masks
    assert calls == [True, True, False]
    assert torch.isfinite(large).all() and not torch.equal(large, normal)
    torch.testing.assert_close(large, plain, rtol=1e-5, atol=1e-5)


def test_embeddings_of_the_plain_model_are_prepared_on_the_way() -> None:
    """The decoder takes the plain model's embeddings too (computing once what it caches), and counts the bytes
    it holds once per storage."""
    model = tiny_model()
    decoder = CpuClickDecoder(model)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        plain_embeddings = model.get_image_embeddings(pixel_values)
        from_plain = decoder(image_embeddings=plain_embeddings, **click_inputs())
        prepared = decoder.prepare(plain_embeddings)
        from_prepared = decoder(image_embeddings=prepared, **click_inputs())
    assert isinstance(from_plain.image_embeddings, CpuImageEmbeddings)
    assert torch.equal(from_plain.pred_masks, from_prepared.pred_masks)
    tensors = [prepared.mask_features, *prepared.multi_scale_features, *prepared.encoder_keys]
    tensors += [*prepared.encoder_values, *prepared.level_mask_features]
    assert prepared.nbytes() == sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()
    )
    assert prepared.nbytes() > plain_embeddings.nbytes()


def test_auto_picks_the_cpu_decoder_only_for_a_float32_model_on_the_cpu() -> None:
    model = tiny_model()
    assert isinstance(select_backend(model, "auto"), CpuClickDecoder)
    assert select_backend(model, "eager") is model
    assert select_backend(copy.deepcopy(model).to(torch.bfloat16), "auto").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(model, "fast")


@pytest.mark.parametrize("queries_per_chunk", [4096, 7])  # one chunk; several, the last one short
def test_gather_sum_equals_grid_sample_including_points_outside_the_map(queries_per_chunk) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 6), (8, 12), (16, 24)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=generator)
    locations = torch.rand(2, 50, 4, 3, 4, 2, generator=generator) * 1.4 - 0.2  # some beyond [0, 1]
    weights = torch.rand(2, 50, 4, 3, 4, generator=generator).softmax(-1)
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    actual = gather_sum_deformable_attention(value, shapes, locations, weights, queries_per_chunk=queries_per_chunk)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("rows_per_chunk", [5, 1000])
def test_ffn_in_chunks_is_the_plain_block_bit_for_bit(monkeypatch, rows_per_chunk) -> None:
    """The chunked FFN reuses one activation buffer for `linear1` and adds its bias after the product: the
    result must equal `norm(x + linear2(relu(linear1(x))))` on the same chunks exactly, the last (shorter) chunk
    included, and a module that is not a plain `nn.Linear` (a quantized one) must still be called as a module."""
    import dynamite_hf.inference.feed_forward

    torch.manual_seed(0)
    linear1, linear2, norm = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24), torch.nn.LayerNorm(24)
    hidden = torch.randn(2, 33, 24)
    monkeypatch.setattr(dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", rows_per_chunk * 40)
    with torch.inference_mode():
        chunks = hidden.reshape(-1, 24).split(rows_per_chunk)
        expected = torch.cat([norm(c + linear2(torch.relu(linear1(c)))) for c in chunks]).view(hidden.shape)
        assert torch.equal(ffn_in_chunks(hidden, linear1, linear2, norm, use_onednn=False), expected)

        calls = []

        class Recorded(torch.nn.Linear):
            def forward(self, inputs):
                calls.append(inputs.shape[0])
                return super().forward(inputs)

        recorded = Recorded(24, 40)
        recorded.load_state_dict(linear1.state_dict())
        assert torch.equal(ffn_in_chunks(hidden, recorded, linear2, norm, use_onednn=False), expected)
    assert sum(calls) == 66 and len(calls) == -(-66 // rows_per_chunk)


def test_ffn_in_chunks_summing_into_its_input_is_the_plain_block(monkeypatch) -> None:
    """`overwrite_input=True` sums into the input and norms once over the whole: the plain block up to float
    rounding for every chunk size; the input is left alone without the flag, and a module that is not a plain
    `nn.Linear` (a quantized one) falls back to the path that leaves it alone."""
    import dynamite_hf.inference.feed_forward

    torch.manual_seed(0)
    linear1, linear2, norm = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24), torch.nn.LayerNorm(24)
    hidden = torch.randn(2, 33, 24)
    with torch.inference_mode():
        expected = norm(hidden + linear2(torch.relu(linear1(hidden))))
        for rows_per_chunk in (5, 33, 1000):
            monkeypatch.setattr(dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", rows_per_chunk * 40)
            untouched = hidden.clone()
            ffn_in_chunks(untouched, linear1, linear2, norm, use_onednn=False)
            assert torch.equal(untouched, hidden)
            overwritten = hidden.clone()
            result = ffn_in_chunks(overwritten, linear1, linear2, norm, overwrite_input=True, use_onednn=False)
            assert not torch.equal(overwritten, hidden)  # the residual sum went into the input
            torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)

        class Quantized(torch.nn.Linear):  # stands for any module that is not a plain nn.Linear
            pass

        other = Quantized(40, 24)
        other.load_state_dict(linear2.state_dict())
        kept = hidden.clone()
        result = ffn_in_chunks(kept, linear1, other, norm, overwrite_input=True, use_onednn=False)
        torch.testing.assert_close(result, expected)
        assert torch.equal(kept, hidden)


@pytest.mark.skipif(not _onednn_available(), reason="this torch has no oneDNN fused linear")
def test_ffn_in_chunks_through_onednn_is_the_float64_block(monkeypatch) -> None:
    """Float32 inference FFNs run through oneDNN's fused linear: every chunk size, summing into the input or
    not, within float32 rounding of the block computed in float64 (the tolerance the plain path meets); a
    weight changed after a call is used by the next one (nothing reordered is kept); modules that are not
    plain `nn.Linear`s, fewer rows than `ONEDNN_MIN_ROWS`, `use_onednn=False` and oneDNN disabled by the user
    (`torch.backends.mkldnn.flags(enabled=False)`) take the plain path."""
    import dynamite_hf.inference.feed_forward

    torch.manual_seed(0)
    linear1, linear2, norm = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24), torch.nn.LayerNorm(24)
    hidden = torch.randn(2, 33, 24)

    def float64_block(inputs):
        modules = [copy.deepcopy(m).double() for m in (linear1, linear2, norm)]
        inputs = inputs.double()
        return modules[2](inputs + modules[1](torch.relu(modules[0](inputs)))).float()

    with torch.inference_mode():
        expected = float64_block(hidden)
        with _RecordedOps() as recorded:  # 66 rows: below ONEDNN_MIN_ROWS, reordering would cost more
            ffn_in_chunks(hidden, linear1, linear2, norm)
        assert not any("mkldnn" in name for name in recorded.names)
        monkeypatch.setattr(dynamite_hf.inference.feed_forward, "ONEDNN_MIN_ROWS", 1)
        for rows_per_chunk in (5, 33, 1000):
            monkeypatch.setattr(dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", rows_per_chunk * 40)
            for overwrite in (False, True):
                with _RecordedOps() as recorded:
                    result = ffn_in_chunks(hidden.clone(), linear1, linear2, norm, overwrite_input=overwrite)
                assert "mkldnn._linear_pointwise.default" in recorded.names
                assert "aten.mm.default" not in recorded.names
                torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)

        linear1.weight.mul_(-0.5)
        linear2.bias.add_(1.0)
        torch.testing.assert_close(ffn_in_chunks(hidden, linear1, linear2, norm), float64_block(hidden))

        class Quantized(torch.nn.Linear):  # stands for any module that is not a plain nn.Linear
            pass

        other = Quantized(40, 24)
        other.load_state_dict(linear2.state_dict())
        for second, use_onednn, enabled in ((other, True, True), (linear2, False, True), (linear2, True, False)):
            with _RecordedOps() as recorded, torch.backends.mkldnn.flags(enabled=enabled):
                result = ffn_in_chunks(
                    hidden.clone(), linear1, second, norm, overwrite_input=True, use_onednn=use_onednn
                )
            assert not any("mkldnn" in name for name in recorded.names)
            torch.testing.assert_close(result, float64_block(hidden), rtol=1e-6, atol=1e-6)


def test_masked_attention_is_the_originals_per_head_form() -> None:
    """The encoder's masked attention (the plain model's, by `attn_implementation`, and the CPU decoder's through
    `scaled_dot_product_attention` with one mask for every head) is the original's form: the mask repeated for
    each head, the blocked scores set to -inf before the softmax, rows blocked everywhere opened."""
    transformer = tiny_model().interactive_transformer
    attention = transformer.encoder_layers[0].cross_attention.attention
    heads, head_dim = attention.num_heads, attention.head_dim
    generator = torch.Generator().manual_seed(0)
    hidden, memory = torch.randn(2, 5, 32, generator=generator), torch.randn(2, 40, 32, generator=generator)
    logits = torch.randn(2, 5, 10, 16, generator=generator)
    logits[1, 3] = -1.0  # a query whose prediction is background everywhere: its row must be opened
    allowed = transformer.attention_mask(logits, (5, 8))
    blocked = ~allowed[:, 0]
    assert allowed.shape == (2, 1, 5, 40) and not blocked[1, 3].any() and blocked.any()
    resized = torch.nn.functional.interpolate(logits, size=(5, 8), mode="bilinear", align_corners=False)
    expected_blocked = (resized.sigmoid().flatten(2) < 0.5).repeat_interleave(heads, dim=0)  # as the original
    expected_blocked[expected_blocked.all(-1)] = False
    assert torch.equal(blocked.repeat_interleave(heads, dim=0), expected_blocked)

    def split(x):
        return x.view(2, -1, heads, head_dim).transpose(1, 2).reshape(2 * heads, -1, head_dim)

    queries = split(attention.q_proj(hidden)) * math.sqrt(1.0 / head_dim)
    keys, values = split(attention.k_proj(memory)), split(attention.v_proj(memory))
    scores = torch.bmm(queries, keys.transpose(1, 2)).masked_fill(expected_blocked, float("-inf"))
    per_head = torch.bmm(scores.softmax(-1), values).view(2, heads, 5, -1).transpose(1, 2).reshape(2, 5, 32)
    expected = attention.out_proj(per_head)
    for implementation in ("eager", "sdpa"):
        attention.config._attn_implementation = implementation
        torch.testing.assert_close(attention(hidden, memory, memory, allowed), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(attention(hidden, memory, memory), expected, rtol=1e-3, atol=1e-3)


def test_a_cuda_model_is_refused_and_the_embeddings_are_inference_only() -> None:
    model = tiny_model()
    decoder = CpuClickDecoder(model)
    embeddings = decoder.get_image_embeddings(torch.randn(1, 3, 64, 64))
    assert embeddings.mask_features.is_inference()
    assert isinstance(embeddings, DynamiteImageEmbeddings)
    with pytest.raises(TypeError, match="model must be a DynamiteModel"):
        CpuClickDecoder(object())
