"""The plain model on tiny random configurations of every backbone family: its inputs and outputs, the attention
implementations, weight initialisation and loading."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import TINY_BACKBONES, click_inputs, tiny_model, two_instance_clicks
from transformers import AutoConfig, AutoModel

from dynamite_hf import PRESETS, Click, DynamiteConfig, DynamiteModel
from dynamite_hf.conversion import convert_original_state_dict, load_original_state_dict
from dynamite_hf.models.dynamite.image_processing_dynamite import fuse_queries, label_instances
from dynamite_hf.models.dynamite.modeling_dynamite import order_clicks


@pytest.mark.parametrize("preset", list(TINY_BACKBONES))
def test_tiny_model_runs_every_backbone(preset: str) -> None:
    model = tiny_model(preset)
    with torch.inference_mode():
        output = model(pixel_values=torch.randn(1, 3, 64, 96), **click_inputs(), output_auxiliary_logits=True)
    assert output.pred_masks.shape == (1, 4 + 3, 16, 24)  # 4 clicks, 3 static background queries
    # Query order: instance 1's clicks, instance 2's, the background click, the static queries.
    assert output.query_labels.tolist() == [[1, 1, 2, 0, 0, 0, 0]]
    assert len(output.auxiliary_logits) == model.config.encoder_layers + 1
    assert len(output.image_embeddings.multi_scale_features) == 3


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("preset", list(TINY_BACKBONES))
def test_eval_mode_runs_the_same_code_with_and_without_grad(preset: str, attn_implementation: str) -> None:
    """No path depends on grad mode: `model.eval()` with and without `torch.no_grad()` gives bit-identical
    logits (with "sdpa", PyTorch itself picks another CPU kernel when an attention mask needs a gradient, as
    Swin's relative position bias does: equal up to rounding there), and the gradient reaches the weights."""
    model = tiny_model(preset, attn_implementation=attn_implementation)
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        without_grad = model(pixel_values=pixel_values, **click_inputs()).pred_masks
    with_grad = model(pixel_values=pixel_values, **click_inputs()).pred_masks
    if attn_implementation == "eager":
        assert torch.equal(with_grad.detach(), without_grad)
    else:
        torch.testing.assert_close(with_grad.detach(), without_grad, rtol=1e-6, atol=1e-6)
    with_grad.sum().backward()
    assert model.interactive_transformer.decoder_layers[0].ffn.linear1.weight.grad.abs().sum() > 0
    assert model.pixel_decoder.encoder_layers[0].self_attn.value_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["mit_b0", "swin_tiny", "mobilenet_v2"])
def test_eager_and_sdpa_attention_agree(preset: str) -> None:
    """`attn_implementation` picks how every attention (backbone and interactive transformer) is computed, not
    what: the explicit products and `scaled_dot_product_attention` give the same logits."""
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_model(preset, attn_implementation=implementation)
        assert model.config._attn_implementation == implementation
        with torch.inference_mode():
            outputs[implementation] = model(pixel_values=pixel_values, **click_inputs()).pred_masks
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=1e-5)


def test_the_attention_implementation_can_be_switched_after_loading(tmp_path) -> None:
    tiny_model().save_pretrained(tmp_path)
    model = DynamiteModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"


def test_cached_embeddings_give_the_same_output_as_the_full_pass() -> None:
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        full = model(pixel_values=pixel_values, **click_inputs())
        cached = model(image_embeddings=model.get_image_embeddings(pixel_values), **click_inputs())
    assert torch.equal(cached.pred_masks, full.pred_masks)


def test_return_dict_false_gives_a_tuple() -> None:
    model = tiny_model()
    with torch.inference_mode():
        output = model(pixel_values=torch.randn(1, 3, 64, 64), **click_inputs(), return_dict=False)
    assert isinstance(output, tuple)
    assert output[0].shape == (1, 7, 16, 16) and output[1].tolist() == [[1, 1, 2, 0, 0, 0, 0]]


def test_query_order_and_timestamps_follow_the_original() -> None:
    """Instance 1's clicks, instance 2's, then background clicks, each in the given order; padding last and trimmed
    to the longest list; timestamps default to the order in the list."""
    points = torch.arange(12, dtype=torch.float64).view(2, 3, 2)
    labels = torch.tensor([[0, 2, 1], [1, -10, -10]])
    ordered_points, ordered_labels, timestamps = order_clicks(points, labels)
    assert ordered_labels.tolist() == [[1, 2, 0], [1, -10, -10]]
    assert ordered_points[0].tolist() == [[4.0, 5.0], [2.0, 3.0], [0.0, 1.0]]
    assert timestamps.tolist() == [[2, 1, 0], [0, 0, 0]]
    _, _, given = order_clicks(points, labels, torch.tensor([[5, 3, 4], [0, 0, 0]]))
    assert given.tolist() == [[4, 3, 5], [0, 0, 0]]
    _, trimmed, _ = order_clicks(points, torch.tensor([[1, 0, -10], [1, -10, -10]]))
    assert trimmed.shape == (2, 2)


def test_batch_of_images_with_different_click_counts_pads_like_the_original() -> None:
    """A shorter click list is padded with background slots (the zero `bg_query`, no position) that take part in
    self-attention, as in the original: the longer list's logits are those it gets alone."""
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 64, 64)
    short = [Click(0, 10.0, 10.0, 0, "model")]
    with torch.inference_mode():
        batch = model(pixel_values=pixel_values, **click_inputs(two_instance_clicks(), short))
        alone = model(pixel_values=pixel_values[:1], **click_inputs())
    assert batch.pred_masks.shape[1] == 4 + 3
    assert batch.query_labels[1].tolist() == [1, 0, 0, 0, 0, 0, 0]
    torch.testing.assert_close(batch.pred_masks[:1], alone.pred_masks, rtol=1e-5, atol=1e-5)


def test_fusion_takes_the_max_over_each_instance_and_argmax_against_background() -> None:
    logits = torch.tensor([[[1.0, -1.0, 0.0]], [[2.0, -3.0, 0.0]], [[0.0, 5.0, -1.0]], [[1.5, 0.0, 0.0]]])
    instances, background = fuse_queries(logits, torch.tensor([1, 1, 2, 0]), 2)
    torch.testing.assert_close(instances, torch.tensor([[[2.0, -1.0, 0.0]], [[0.0, 5.0, -1.0]]]))
    # pixel 0: instance 1 (2.0) beats the background (1.5); pixel 1: instance 2; pixel 2: a tie between instance 1
    # and the background goes to the instance, as the original's argmax over [instances..., background queries...].
    assert label_instances(instances, background).tolist() == [[1, 2, 1]]
    scores = torch.tensor([[[0.2, 0.5, 0.1, 0.3]], [[0.2, 0.1, 0.6, 0.3]], [[0.1, 0.5, 0.6, 0.0]]])
    assert label_instances(scores, torch.tensor([[0.3, 0.5, 0.2, 0.3]])).tolist() == [[0, 1, 2, 1]]
    assert label_instances(scores).tolist() == [[1, 1, 2, 1]]


def test_save_and_auto_model_round_trip(tmp_path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    assert AutoConfig.from_pretrained(tmp_path).model_type == "dynamite"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DynamiteModel)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(pixel_values=pixel_values, **click_inputs()).pred_masks
        actual = loaded(pixel_values=pixel_values, **click_inputs()).pred_masks
    assert torch.equal(actual, expected)


def test_a_checkpoint_missing_a_layer_loads_with_a_warning_and_initialised_weights(tmp_path, caplog) -> None:
    """transformers' loading initialises what a checkpoint lacks with the model's `_init_weights` (as the original
    initialises it) and names the keys; everything the checkpoint holds loads unchanged."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    prefix = "interactive_transformer.decoder_layers.1."
    dropped = sorted(key for key in state if key.startswith(prefix))
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    with caplog.at_level(logging.WARNING):
        loaded = DynamiteModel.from_pretrained(tmp_path)
    assert "decoder_layers.1.cross_attention.attention.q_proj.weight" in caplog.text
    loaded_state = loaded.state_dict()
    for key in dropped:
        assert torch.isfinite(loaded_state[key]).all(), key
    layer = loaded.interactive_transformer.decoder_layers[1]
    bound = (6 / (32 + 32)) ** 0.5  # xavier uniform of the (32, 32) output projection
    weight = layer.cross_attention.attention.out_proj.weight
    assert 0 < weight.abs().max() <= bound and weight.std() > bound / 4
    assert torch.equal(layer.cross_attention.norm.weight, torch.ones(32))
    assert torch.equal(layer.cross_attention.attention.q_proj.bias, torch.zeros(32))
    for key, value in state.items():
        if key not in dropped:
            assert torch.equal(loaded_state[key], value), key


def test_a_new_model_is_initialised_as_the_original() -> None:
    model = tiny_model("resnet50")
    transformer = model.interactive_transformer
    assert torch.equal(transformer.bg_query, torch.zeros(32)) and not transformer.bg_query.requires_grad
    assert transformer.static_bg_query.abs().max() <= (6 / (3 + 32)) ** 0.5  # xavier
    attention = model.pixel_decoder.encoder_layers[0].self_attn
    assert torch.equal(attention.attention_weights.weight, torch.zeros_like(attention.attention_weights.weight))
    offsets = attention.sampling_offsets.bias.view(attention.num_heads, attention.num_levels, attention.num_points, 2)
    assert torch.equal(offsets[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # rings around the reference point
    frozen = model.backbone.stem.conv1.norm
    assert torch.equal(frozen.running_var, torch.full_like(frozen.running_var, 1 - frozen.eps))
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()


def test_every_preset_builds_a_config() -> None:
    for preset in PRESETS:
        config = DynamiteConfig.from_preset(preset)
        assert DynamiteConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert DynamiteConfig.from_preset("hrnet_w32").pixel_decoder_num_fpn_levels == 2
    assert DynamiteConfig.from_preset("swin_large").backbone_config["window_size"] == 12


def test_preprocessing_keys_of_an_older_config_are_dropped() -> None:
    config = DynamiteConfig(test_short_edge=448, guided_filter_radius=8, pixel_mean=[1, 2, 3])
    assert not {"test_short_edge", "guided_filter_radius", "pixel_mean"} & set(config.to_dict())


# -- bad input ---------------------------------------------------------------------------------------------


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown preset 'resnet18'"):
        DynamiteConfig.from_preset("resnet18")


def call(model: DynamiteModel, points, labels, **kwargs):
    return model(
        pixel_values=torch.randn(1, 3, 64, 64),
        input_points=torch.tensor(points, dtype=torch.float64),
        input_labels=torch.tensor(labels),
        **kwargs,
    )


def test_click_outside_the_image_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"input_points\[0\]\[1\] at \(x=5.0, y=70.0\) lies outside the image of 64x64"
    ):
        call(tiny_model(), [[[1.0, 1.0], [5.0, 70.0]]], [[1, 1]])
    # Inside the padded input but outside the resized image.
    with pytest.raises(ValueError, match=r"outside the image of 50x64 pixels \(pixels of the resized image"):
        call(tiny_model(), [[[5.0, 55.0]]], [[1]], reshaped_input_sizes=torch.tensor([[50, 64]]))


def test_instance_without_clicks_is_named() -> None:
    with pytest.raises(ValueError, match=r"input_labels\[0\]: instance\(s\) \[2\] have no clicks"):
        call(tiny_model(), [[[1.0, 1.0], [5.0, 5.0]]], [[1, 3]])


def test_only_background_clicks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"input_labels\[0\] has no click on an instance"):
        call(tiny_model(), [[[1.0, 1.0]]], [[0]])


def test_bad_labels_and_shapes_are_named() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"input_labels\[0\] holds \[-3\]"):
        call(model, [[[1.0, 1.0], [2.0, 2.0]]], [[1, -3]])
    with pytest.raises(ValueError, match=r"input_points must be a \(batch, num_clicks, 2\) tensor"):
        call(model, [[1.0, 1.0]], [[1]])
    with pytest.raises(ValueError, match="input_labels must be a"):
        call(model, [[[1.0, 1.0]]], [[1, 1]])
    with pytest.raises(ValueError, match="input_labels must hold integers"):
        call(model, [[[1.0, 1.0]]], [[1.0]])
    with pytest.raises(ValueError, match="input_points holds 1 images, the pixel batch 2"):
        model(pixel_values=torch.randn(2, 3, 64, 64), **click_inputs())


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 64, 64), (1, 3, 60, 64)])
def test_wrong_pixel_values_are_named(shape) -> None:
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model()(pixel_values=torch.randn(shape), **click_inputs())


def test_pixels_and_embeddings_together_or_no_clicks_are_refused() -> None:
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        model(pixel_values=pixel_values, image_embeddings=model.get_image_embeddings(pixel_values), **click_inputs())
    with pytest.raises(ValueError, match="input_points and input_labels are required"):
        model(pixel_values=pixel_values)


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
