"""Unit tests of the model on tiny random configurations of every backbone family."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModel

from dynamite_hf import PRESETS, Click, DynamiteConfig, DynamiteModel, fuse_instances
from dynamite_hf.conversion import convert_original_state_dict, load_original_state_dict
from dynamite_hf.inference.feed_forward import _onednn_available
from dynamite_hf.models.dynamite.modeling_dynamite import group_query_logits, label_instances

TINY_HEAD = {
    "hidden_dim": 32,
    "num_heads": 4,
    "encoder_layers": 3,
    "encoder_ffn_dim": 64,
    "decoder_layers": 2,
    "decoder_ffn_dim": 64,
    "pixel_decoder_dim": 32,
    "pixel_decoder_layers": 1,
    "pixel_decoder_ffn_dim": 64,
    "pixel_decoder_num_heads": 4,
    "group_norm_groups": 8,
    "num_static_bg_queries": 3,
}
TINY_BACKBONES = {
    "resnet50": {},
    "hrnet_w32": {},
    "mit_b0": {"backbone_config": {"embed_dims": [8, 16, 32, 32], "num_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1]}},
    "swin_tiny": {
        "backbone_config": {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 4}
    },
    "mobilenet_v2": {},
}


def tiny_model(preset: str = "mobilenet_v2", **overrides) -> DynamiteModel:
    torch.manual_seed(0)
    config = DynamiteConfig.from_preset(preset, **{**TINY_HEAD, **TINY_BACKBONES[preset], **overrides})
    return DynamiteModel(config).eval()


def clicks_two_instances() -> list[Click]:
    return [
        Click(0, 10.5, 20.5, 0, "model"),
        Click(1, 40.0, 50.0, 1, "model"),
        Click(None, 60.0, 5.0, 2, "model"),
        Click(0, 15.0, 30.0, 3, "model"),
    ]


@pytest.mark.parametrize("preset", list(TINY_BACKBONES))
def test_tiny_model_runs_every_backbone(preset: str) -> None:
    model = tiny_model(preset)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        output = model(pixel_values=pixel_values, clicks=[clicks_two_instances()], image_sizes=[(64, 90)])
    assert output.pred_masks.shape == (1, 4 + 3, 16, 24)
    assert output.instance_logits[0].shape == (2, 64, 90)
    assert output.label_maps[0].shape == (64, 90)
    assert output.num_clicks_per_instance == [[2, 1]]
    assert len(output.image_features.multi_scale_features) == 3


def test_cached_features_give_the_same_output_as_the_full_pass() -> None:
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 64, 64)
    clicks = [clicks_two_instances()]
    with torch.inference_mode():
        full = model(pixel_values=pixel_values, clicks=clicks)
        cached = model(image_features=model.get_image_features(pixel_values), clicks=clicks)
    torch.testing.assert_close(cached.pred_masks, full.pred_masks, rtol=0, atol=0)
    assert torch.equal(cached.label_maps[0], full.label_maps[0])


def test_image_features_count_the_bytes_of_each_tensor_once() -> None:
    model = tiny_model()
    with torch.inference_mode():
        features = model.get_image_features(torch.randn(1, 3, 64, 96))
    memory = features.memory
    tensors = [features.mask_features, *features.multi_scale_features, *memory.encoder_keys]
    tensors += [*memory.encoder_values, *memory.level_mask_features]
    tensors += [memory.decoder_pixel_position, memory.decoder_first_inputs]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    # The pixel decoder's levels are views of one flattened tensor: its bytes count once.
    assert len(storages) < len(tensors)
    assert features.nbytes() == sum(storages.values())
    assert features.nbytes() >= sum(t.numel() * t.element_size() for t in tensors[3:])
    first_inputs = memory.decoder_first_inputs.untyped_storage().nbytes()
    memory.decoder_first_inputs = features.mask_features.flatten(2).transpose(1, 2)  # a view: no new bytes
    assert features.nbytes() == sum(storages.values()) - first_inputs


def test_inference_ffns_over_row_chunks_give_the_unchunked_logits(monkeypatch) -> None:
    """The pixel decoder's and the interactive transformer's FFNs run over chunks of rows in inference (their
    wide activation never exists whole); a chunk size that splits every FFN must not change the logits."""
    import dynamite_hf.inference.feed_forward

    model = tiny_model()
    pixel_values = torch.randn(1, 3, 96, 128)
    clicks = [clicks_two_instances()]
    chunked_modules = [m for m in model.modules() if hasattr(m, "chunked")]
    assert chunked_modules
    with torch.inference_mode():
        for module in chunked_modules:
            module.chunked = False
        whole = model(pixel_values=pixel_values, clicks=clicks).pred_masks
        for module in chunked_modules:
            del module.chunked
        monkeypatch.setattr(
            dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", 7 * 64
        )  # 7 rows or fewer per chunk
        chunked = model(pixel_values=pixel_values, clicks=clicks).pred_masks
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows_per_chunk", [5, 1000])
def test_ffn_in_chunks_is_the_plain_block_bit_for_bit(monkeypatch, rows_per_chunk) -> None:
    """The chunked FFN reuses one activation buffer for `linear1` and adds its bias after the product: the
    result must equal `norm(x + linear2(relu(linear1(x))))` on the same chunks exactly, the last (shorter) chunk
    included, and a module that is not a plain `nn.Linear` (a quantized one) must still be called as a module."""
    import dynamite_hf.inference.feed_forward
    from dynamite_hf.inference.feed_forward import ffn_in_chunks

    torch.manual_seed(0)
    linear1, linear2, norm = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24), torch.nn.LayerNorm(24)
    hidden = torch.randn(2, 33, 24)
    monkeypatch.setattr(dynamite_hf.inference.feed_forward, "USE_ONEDNN", False)  # the plain path (oneDNN: next tests)
    monkeypatch.setattr(dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", rows_per_chunk * 40)
    with torch.inference_mode():
        chunks = hidden.reshape(-1, 24).split(rows_per_chunk)
        expected = torch.cat([norm(c + linear2(torch.relu(linear1(c)))) for c in chunks]).view(hidden.shape)
        assert torch.equal(ffn_in_chunks(hidden, linear1, linear2, norm), expected)

        calls = []

        class Recorded(torch.nn.Linear):
            def forward(self, inputs):
                calls.append(inputs.shape[0])
                return super().forward(inputs)

        recorded = Recorded(24, 40)
        recorded.load_state_dict(linear1.state_dict())
        assert torch.equal(ffn_in_chunks(hidden, recorded, linear2, norm), expected)
    assert sum(calls) == 66 and len(calls) == -(-66 // rows_per_chunk)


def test_ffn_in_chunks_summing_into_its_input_is_the_plain_block(monkeypatch) -> None:
    """`overwrite_input=True` sums into the input and norms once over the whole: the plain block up to float
    rounding for every chunk size; the input is left alone without the flag, and a module that is not a plain
    `nn.Linear` (a quantized one) falls back to the path that leaves it alone."""
    import dynamite_hf.inference.feed_forward
    from dynamite_hf.inference.feed_forward import ffn_in_chunks

    torch.manual_seed(0)
    linear1, linear2, norm = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24), torch.nn.LayerNorm(24)
    hidden = torch.randn(2, 33, 24)
    monkeypatch.setattr(dynamite_hf.inference.feed_forward, "USE_ONEDNN", False)  # the plain path (oneDNN: next tests)
    with torch.inference_mode():
        expected = norm(hidden + linear2(torch.relu(linear1(hidden))))
        for rows_per_chunk in (5, 33, 1000):
            monkeypatch.setattr(dynamite_hf.inference.feed_forward, "FFN_CHUNK_ELEMENTS", rows_per_chunk * 40)
            untouched = hidden.clone()
            ffn_in_chunks(untouched, linear1, linear2, norm)
            assert torch.equal(untouched, hidden)
            overwritten = hidden.clone()
            result = ffn_in_chunks(overwritten, linear1, linear2, norm, overwrite_input=True)
            assert not torch.equal(overwritten, hidden)  # the residual sum went into the input
            torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)

        class Quantized(torch.nn.Linear):  # stands for any module that is not a plain nn.Linear
            pass

        other = Quantized(40, 24)
        other.load_state_dict(linear2.state_dict())
        kept = hidden.clone()
        torch.testing.assert_close(ffn_in_chunks(kept, linear1, other, norm, overwrite_input=True), expected)
        assert torch.equal(kept, hidden)


class _RecordedOps(TorchDispatchMode):
    """The names of the operators run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not _onednn_available(), reason="this torch has no oneDNN fused linear")
def test_ffn_in_chunks_through_onednn_is_the_float64_block(monkeypatch) -> None:
    """Float32 inference FFNs run through oneDNN's fused linear: every chunk size, summing into the input or
    not, within float32 rounding of the block computed in float64 (the tolerance the plain path meets); a
    weight changed after a call is used by the next one (nothing reordered is kept); modules that are not
    plain `nn.Linear`s, fewer rows than `ONEDNN_MIN_ROWS`, `USE_ONEDNN = False` and oneDNN disabled by the user
    (`torch.backends.mkldnn.flags(enabled=False)`) take the plain path."""
    import dynamite_hf.inference.feed_forward
    from dynamite_hf.inference.feed_forward import ffn_in_chunks

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

        with torch.no_grad():
            linear1.weight.mul_(-0.5)
            linear2.bias.add_(1.0)
        torch.testing.assert_close(ffn_in_chunks(hidden, linear1, linear2, norm), float64_block(hidden))

        class Quantized(torch.nn.Linear):  # stands for any module that is not a plain nn.Linear
            pass

        other = Quantized(40, 24)
        other.load_state_dict(linear2.state_dict())
        monkeypatch.setattr(dynamite_hf.inference.feed_forward, "USE_ONEDNN", True)
        for second, switch, enabled in ((other, True, True), (linear2, False, True), (linear2, True, False)):
            monkeypatch.setattr(dynamite_hf.inference.feed_forward, "USE_ONEDNN", switch)
            with _RecordedOps() as recorded, torch.backends.mkldnn.flags(enabled=enabled):
                result = ffn_in_chunks(hidden.clone(), linear1, second, norm, overwrite_input=True)
            assert not any("mkldnn" in name for name in recorded.names)
            torch.testing.assert_close(result, float64_block(hidden), rtol=1e-6, atol=1e-6)


def test_decoder_attention_sums_its_residual_in_the_product() -> None:
    """The few-keys attention with a residual gives `residual + attention` (the output bias folded into the
    product), into the residual itself when allowed; a decoder layer gives the same output in inference with
    and without overwriting its pixels, and as in training."""
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2)
    layer = model.interactive_transformer.decoder_layers[0]
    pixels, position = torch.randn(2, 50, 64), torch.randn(2, 50, 64)
    keys, values = torch.randn(2, 11, 64), torch.randn(2, 11, 64)
    with torch.inference_mode():
        attended = layer.cross_attention.attention(pixels + position, keys, values)
        summed = layer._attend_few_keys(pixels + position, keys, values, pixels)
        torch.testing.assert_close(summed, pixels + attended, rtol=1e-5, atol=1e-5)
        residual = pixels.clone()
        assert layer._attend_few_keys(pixels + position, keys, values, residual, True) is residual
        torch.testing.assert_close(residual, summed, rtol=1e-6, atol=1e-6)

        kept = pixels.clone()
        inference = layer(kept, pixels + position, keys, values)
        assert torch.equal(kept, pixels)
        overwritten = layer(pixels.clone(), pixels + position, keys, values, overwrite_pixels=True)
        torch.testing.assert_close(overwritten, inference, rtol=1e-6, atol=1e-6)
    training = layer(pixels, pixels + position, keys, values)  # autograd on: the training path
    assert training.requires_grad
    torch.testing.assert_close(training.detach(), inference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("instances", [2, 30])  # few keys (heads x queries < dim) and the standard attention
def test_decoder_in_blocks_of_pixels_gives_the_layer_by_layer_logits(monkeypatch, instances: int, onednn: bool) -> None:
    """Eager inference runs every decoder layer and the mask head over one block of pixels at a time; blocks
    that do not divide the pixel count, over a batch of two images, give the layer-by-layer logits. With few
    keys the blocks take their scores through oneDNN (one product per image, block and layer, beside the FFNs'
    two) or `addmm` (oneDNN off), and their softmax in base 2 (`exp2`); the mask head goes through oneDNN too."""
    import dynamite_hf.inference.feed_forward

    monkeypatch.setattr(dynamite_hf.inference.feed_forward, "USE_ONEDNN", onednn)
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2, decoder_layers=2)
    transformer = model.interactive_transformer
    pixel_values = torch.randn(2, 3, 96, 128)
    clicks = [
        [Click(k, 5.0 + 3 * k, 7.0 + 4 * k, k, "model") for k in range(instances)],
        [Click(k, 90.0 - 3 * k, 120.0 - 4 * k, k, "model") for k in range(instances)],
    ]
    assert (2 * (instances + model.config.num_static_bg_queries) < 64) == (instances == 2)
    calls = []
    monkeypatch.setattr(transformer, "decoder_block_rows", 37)
    original = transformer._decode_in_blocks
    monkeypatch.setattr(transformer, "_decode_in_blocks", lambda *a: calls.append(1) or original(*a))
    with torch.inference_mode():
        features = model.get_image_features(pixel_values)
        with _RecordedOps() as recorded:
            blocks = model(image_features=features, clicks=clicks).pred_masks
        assert calls  # the block path ran
        for layer in transformer.decoder_layers:
            monkeypatch.setattr(layer.ffn, "chunked", False)  # as an exported graph: layer by layer
        layers = model(image_features=features, clicks=clicks).pred_masks
    assert len(calls) == 1
    torch.testing.assert_close(blocks, layers, rtol=1e-5, atol=1e-5)
    # The FFNs' products come in pairs (`.default` with ReLU, `.binary` with the residual); the rest are the
    # scores' (few keys) and the mask head's, one per image and block.
    other_products = recorded.names.count("mkldnn._linear_pointwise.default") - recorded.names.count(
        "mkldnn._linear_pointwise.binary"
    )
    few_keys = instances == 2
    num_blocks = -(-(96 // 4) * (128 // 4) // 37)
    per_block = len(transformer.decoder_layers) + 1 if few_keys else 1
    assert other_products == (2 * num_blocks * per_block if onednn and _onednn_available() else 0)
    assert ("aten.exp2_.default" in recorded.names) == few_keys


def test_softmax_base2_is_each_heads_softmax(monkeypatch) -> None:
    """`softmax_base2_` is each head's `softmax(s * ln 2)` in float32 and float64; scores whose powers of 2
    overflow or underflow as a whole head give None, and the decoder's blocks then compute the scores again for
    `softmax_base2_fallback` (`torch.softmax`, which takes any scores); half precision goes there at once."""
    from dynamite_hf.models.dynamite.interactive_transformer import softmax_base2_, softmax_base2_fallback

    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
        scores = torch.randn(300, 3 * 11, dtype=dtype) * 20
        masked = scores.clone()
        masked[:, ::5] = float("-inf")  # keys blocked: powers of exactly 0, the others unchanged
        overflow = scores.clone()
        overflow[7, 4] = 140.0 if dtype == torch.float32 else 1100.0
        underflow = scores.clone()
        underflow[9, 11:22] -= 200.0  # the whole second head of row 9
        for case, fast in ((scores, True), (masked, True), (overflow, False), (underflow, False)):
            expected = (case.double() * math.log(2.0)).view(300, 3, 11).softmax(-1).view(300, -1)
            result = softmax_base2_(case.clone(), heads=3)
            assert (result is not None) == fast
            if result is None:
                result = softmax_base2_fallback(case.clone(), heads=3)
            torch.testing.assert_close(result.double(), expected, rtol=tolerance, atol=tolerance)
    half = torch.randn(50, 2 * 7).bfloat16()
    expected = (half.float() * math.log(2.0)).view(50, 2, 7).softmax(-1).view(50, -1)
    torch.testing.assert_close(softmax_base2_(half.clone(), heads=2).float(), expected, rtol=2e-2, atol=1e-2)

    # In the decoder: blocks whose scores overflow are computed again and go through torch.softmax.
    import dynamite_hf.models.dynamite.interactive_transformer

    fallbacks = []
    monkeypatch.setattr(
        dynamite_hf.models.dynamite.interactive_transformer,
        "softmax_base2_fallback",
        lambda *args: fallbacks.append(1) or softmax_base2_fallback(*args),
    )
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2)
    transformer = model.interactive_transformer
    features = model.get_image_features(torch.randn(1, 3, 64, 64))
    monkeypatch.setattr(transformer, "decoder_block_rows", 50)
    with torch.inference_mode():
        normal = model(image_features=features, clicks=[clicks_two_instances()]).pred_masks
        assert not fallbacks
        with torch.no_grad():
            for layer in transformer.decoder_layers:
                layer.cross_attention.attention.q_proj.weight.mul_(400.0)  # scores far beyond 2^128
                layer.cross_attention.attention.k_proj.weight.mul_(400.0)
        large = model(image_features=features, clicks=[clicks_two_instances()]).pred_masks
        assert fallbacks
        for layer in transformer.decoder_layers:
            monkeypatch.setattr(layer.ffn, "chunked", False)  # the layer-by-layer reference
        reference = model(image_features=features, clicks=[clicks_two_instances()]).pred_masks
    assert not torch.equal(large, normal)
    torch.testing.assert_close(large, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_keys", [7, 16, 23])
def test_few_key_and_standard_decoder_attention_agree(num_keys: int) -> None:
    """The reassociated decoder attention (used while heads x queries < dim), with its key axis padded up to 16
    keys or not, is the same function."""
    model = tiny_model(hidden_dim=64, pixel_decoder_dim=64, num_heads=2)
    layer = model.interactive_transformer.decoder_layers[0]
    pixels, keys, values = torch.randn(2, 50, 64), torch.randn(2, num_keys, 64), torch.randn(2, num_keys, 64)
    with torch.inference_mode():
        padded = layer._attend_few_keys(pixels, keys, values)
        layer.min_keys = 0
        unpadded = layer._attend_few_keys(pixels, keys, values)
        standard = layer.cross_attention.attention(pixels, keys, values)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded, unpadded, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(padded, standard, rtol=1e-5, atol=1e-5)


def test_masked_attention_in_inference_is_the_originals_per_head_form() -> None:
    """Inference attends through `F.scaled_dot_product_attention` with one mask for every head; training through
    the explicit products. Both must be the original's form: the mask repeated for each head, the blocked scores
    set to -inf before the softmax, and `_blocked` opening the rows that are blocked everywhere."""
    model = tiny_model()
    transformer = model.interactive_transformer
    attention = transformer.encoder_layers[0].cross_attention.attention
    heads = attention.num_heads
    generator = torch.Generator().manual_seed(0)
    hidden, memory = torch.randn(2, 5, 32, generator=generator), torch.randn(2, 40, 32, generator=generator)
    logits = torch.randn(2, 5, 5, 8, generator=generator)
    logits[1, 3] = -1.0  # a query whose prediction is background everywhere: its row must be opened
    blocked = transformer._blocked(logits)
    assert blocked.shape == (2, 5, 40) and not blocked[1, 3].any() and blocked.any()
    expected_blocked = (logits.sigmoid().flatten(2) < 0.5).repeat_interleave(heads, dim=0)  # as the original
    expected_blocked[expected_blocked.all(-1)] = False
    assert torch.equal(blocked.repeat_interleave(heads, dim=0), expected_blocked)

    queries = attention.project_queries(hidden)
    keys, values = attention.project_memory(memory, memory)
    scores = torch.bmm(queries, keys.transpose(1, 2)).masked_fill(expected_blocked, float("-inf"))
    per_head = torch.bmm(scores.softmax(-1), values).view(2, heads, 5, -1).transpose(1, 2).reshape(2, 5, 32)
    expected = attention.out_proj(per_head)
    with torch.inference_mode():
        fused = attention.attend(queries, keys, values, blocked)
        unmasked = attention.attend(queries, keys, values)
    explicit = attention.attend(queries, keys, values, blocked)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(explicit, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked, expected, rtol=1e-3, atol=1e-3)


def test_attention_masks_predicted_at_the_levels_sizes_match_the_resized_stride_4_prediction() -> None:
    """Inference predicts the encoder layers' attention masks from mask features resized to each level; the
    training path (auxiliary outputs) resizes the stride-4 prediction. Same masks, so the same final logits."""
    model = tiny_model()
    features = model.get_image_features(torch.randn(1, 3, 96, 128))
    clicks = [clicks_two_instances()]
    with torch.inference_mode():
        at_levels, _, _ = model.query_logits(features, clicks, [(96, 128)])
        features.memory.level_mask_features = None  # forces the stride-4 prediction and its resizing
        resized, _, _ = model.query_logits(features, clicks, [(96, 128)])
        with_auxiliary, auxiliary, _ = model.query_logits(features, clicks, [(96, 128)], output_auxiliary=True)
    torch.testing.assert_close(at_levels, resized, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_auxiliary, resized, rtol=0, atol=0)
    assert len(auxiliary) == len(model.interactive_transformer.encoder_layers) + 1


def test_batch_of_images_with_different_click_counts_pads_like_the_original() -> None:
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 64, 64)
    short = [Click(0, 10.0, 10.0, 0, "model")]
    with torch.inference_mode():
        batch = model(pixel_values=pixel_values, clicks=[clicks_two_instances(), short])
        alone = model(pixel_values=pixel_values[:1], clicks=[clicks_two_instances()])
    assert batch.pred_masks.shape[1] == 4 + 3  # the second image is padded with 3 bg_query slots
    torch.testing.assert_close(batch.pred_masks[:1], alone.pred_masks, rtol=1e-5, atol=1e-5)
    assert batch.label_maps[1].max() <= 1


def test_fusion_takes_the_max_over_each_instance_and_argmax_against_background() -> None:
    logits = torch.tensor([[[1.0, -1.0, 0.0]], [[2.0, -3.0, 0.0]], [[0.0, 5.0, -1.0]], [[1.5, 0.0, 0.0]]])
    instance_logits, label_map = fuse_instances(logits, [2, 1])  # instance 0 = queries 0-1, 1 = query 2
    torch.testing.assert_close(instance_logits, torch.tensor([[[2.0, -1.0, 0.0]], [[0.0, 5.0, -1.0]]]))
    # pixel 0: instance 0 (2.0) beats bg (1.5); pixel 1: instance 1; pixel 2: tie between instance 0 and
    # background goes to the instance, as argmax over [instances..., background queries...].
    assert label_map.tolist() == [[1, 2, 1]]


def test_labelling_per_instance_maps_follows_the_fusion_rule() -> None:
    """`label_instances` (the predictor's previews and refined maps, one map per instance) labels as
    `fuse_instances` with one query per instance: ties to the lower instance, background only when higher."""
    scores = torch.tensor([[[0.2, 0.5, 0.1, 0.3]], [[0.2, 0.1, 0.6, 0.3]], [[0.1, 0.5, 0.6, 0.0]]])
    background = torch.tensor([[0.3, 0.5, 0.2, 0.3]])
    assert label_instances(scores, background).tolist() == [[0, 1, 2, 1]]
    assert label_instances(scores).tolist() == [[1, 1, 2, 1]]
    random = torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(0))
    _, fused = fuse_instances(random, [1, 1, 1, 1])
    assert torch.equal(label_instances(random[:4], random[4]), fused)


def test_save_and_auto_model_round_trip(tmp_path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    assert AutoConfig.from_pretrained(tmp_path).model_type == "dynamite"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DynamiteModel)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(pixel_values=pixel_values, clicks=[clicks_two_instances()])
        actual = loaded(pixel_values=pixel_values, clicks=[clicks_two_instances()])
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks, rtol=0, atol=0)


def test_every_preset_builds_a_config() -> None:
    for preset in PRESETS:
        config = DynamiteConfig.from_preset(preset)
        assert DynamiteConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert DynamiteConfig.from_preset("hrnet_w32").pixel_decoder_num_fpn_levels == 2
    assert DynamiteConfig.from_preset("swin_large").backbone_config["window_size"] == 12


# -- bad input ---------------------------------------------------------------------------------------------


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown preset 'resnet18'"):
        DynamiteConfig.from_preset("resnet18")


def test_click_outside_the_image_is_named() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"clicks\[0\]\[1\] at \(row=70.0, col=5.0\) lies outside"):
        model(
            pixel_values=torch.randn(1, 3, 64, 64),
            clicks=[[Click(0, 1.0, 1.0, 0, "model"), Click(0, 70.0, 5.0, 1, "model")]],
        )


def test_instance_without_clicks_is_named() -> None:
    model = tiny_model()
    clicks = [[Click(0, 1.0, 1.0, 0, "model"), Click(2, 5.0, 5.0, 1, "model")]]
    with pytest.raises(ValueError, match=r"instance\(s\) \[1\] have no clicks"):
        model(pixel_values=torch.randn(1, 3, 64, 64), clicks=clicks)


def test_only_background_clicks_are_refused() -> None:
    with pytest.raises(ValueError, match="only background clicks"):
        tiny_model()(pixel_values=torch.randn(1, 3, 64, 64), clicks=[[Click(None, 1.0, 1.0, 0, "model")]])


def test_clicks_in_the_original_frame_are_refused() -> None:
    with pytest.raises(ValueError, match="'original' frame"):
        tiny_model()(pixel_values=torch.randn(1, 3, 64, 64), clicks=[[Click(0, 1.0, 1.0, 0)]])


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 64, 64), (1, 3, 60, 64)])
def test_wrong_pixel_values_are_named(shape) -> None:
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model()(pixel_values=torch.randn(shape), clicks=[[Click(0, 1.0, 1.0, 0, "model")]])


def test_pixels_and_features_together_are_refused() -> None:
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        model(pixel_values=pixel_values, image_features=model.get_image_features(pixel_values), clicks=[[]])


def test_bad_click_fields_are_named() -> None:
    with pytest.raises(ValueError, match="Click.instance"):
        Click(-1, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="Click.frame"):
        Click(0, 0.0, 0.0, 0, frame="resized")


def test_checkpoint_with_foreign_or_missing_keys_is_refused() -> None:
    model = tiny_model("resnet50")
    with pytest.raises(KeyError, match="sem_seg_head.predictor.class_embed.weight"):
        convert_original_state_dict({"sem_seg_head.predictor.class_embed.weight": torch.zeros(1)}, model.config)
    with pytest.raises(KeyError, match="missing from the checkpoint"):
        load_original_state_dict(model, {"sem_seg_head.interactive_transformer.query_embed": torch.zeros(32)})


@pytest.mark.parametrize(
    ("counts", "num_queries", "image_size", "output_size"),
    [
        ([1, 1], 12, (60, 88), (60, 88)),  # 10 background queries, nothing cropped
        ([2, 1, 3], 6, (53, 80), (53, 80)),  # no background query, padding cropped
        ([1, 2], 7, (53, 80), (101, 37)),  # cropped, then resized to another output size
    ],
)
def test_grouped_output_logits_is_grouping_the_resized_logits(counts, num_queries, image_size, output_size) -> None:
    """`grouped_output_logits` resizes one query at a time into a running max per instance (and the background):
    bit for bit the same as resizing every query (`post_process_logits`) and grouping afterwards."""
    torch.manual_seed(0)
    query_logits = torch.randn(num_queries, 15, 22) * 4
    with torch.inference_mode():
        grouped = DynamiteModel.grouped_output_logits(query_logits, counts, (60, 88), image_size, output_size)
        resized = DynamiteModel.post_process_logits(query_logits, (60, 88), image_size, output_size)
        instances, background = group_query_logits(resized, counts)
    expected = instances if background is None else torch.cat([instances, background[None]])
    assert grouped.shape == (len(counts) + (background is not None), *output_size)
    assert torch.equal(grouped, expected)
