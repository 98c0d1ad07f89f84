"""`scripts/grow_model.py`: more interactive-transformer layers, starting from (almost) the model's function."""

from __future__ import annotations

import pytest
import torch
from script_module import load_script
from tiny import click_inputs, tiny_model

from dynamite_hf import DynamiteImageProcessor, DynamiteModel


def script():
    return load_script("grow_model.py")


def logits(model: DynamiteModel, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=pixel_values, **click_inputs()).pred_masks


def saved(tmp_path, **overrides) -> tuple[DynamiteModel, str]:
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path / "model")
    DynamiteImageProcessor().save_pretrained(tmp_path / "model")
    return model, str(tmp_path / "model")


def test_grown_layers_start_as_identities_and_keep_the_old_weights(tmp_path) -> None:
    model, path = saved(tmp_path, encoder_layers=2, decoder_layers=1)
    grown = script().grow(path, encoder_layers=4, decoder_layers=3)
    assert (grown.config.encoder_layers, grown.config.decoder_layers) == (4, 3)
    old = model.state_dict()
    for key, value in grown.state_dict().items():
        if key in old:
            assert torch.equal(value, old[key]), key
    transformer = grown.interactive_transformer
    for layer in [*transformer.encoder_layers[2:], *transformer.decoder_layers[1:]]:
        zeroed = [m for n, m in layer.named_modules() if n.endswith("out_proj") or n.endswith("linear2")]
        assert len(zeroed) == (3 if hasattr(layer, "self_attention") else 2)
        assert all(not m.weight.any() and not m.bias.any() for m in zeroed)
        assert layer.cross_attention.attention.q_proj.weight.any()  # the rest is initialised, not zero
    # The LayerNorms of a fresh model are at weight 1 and bias 0, so each new layer re-normalises an already
    # normalised input: the same logits up to the LayerNorm's epsilon (a trained model's change is a few %).
    pixel_values = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(logits(grown, pixel_values), logits(model, pixel_values), rtol=1e-4, atol=1e-4)


def test_the_new_layers_train(tmp_path) -> None:
    _, path = saved(tmp_path, encoder_layers=2, decoder_layers=1)
    grown = script().grow(path, encoder_layers=3, decoder_layers=2).train()
    pred_masks = grown(pixel_values=torch.randn(1, 3, 64, 96), **click_inputs()).pred_masks
    pred_masks.square().mean().backward()
    transformer = grown.interactive_transformer
    for layer in (transformer.encoder_layers[2], transformer.decoder_layers[1]):
        assert layer.ffn.linear2.weight.grad.abs().sum() > 0  # the zero branches get gradients at once


def test_the_script_writes_a_loadable_folder_and_names_bad_arguments(tmp_path, capsys) -> None:
    saved(tmp_path, encoder_layers=2, decoder_layers=1)
    args = ["--model", str(tmp_path / "model"), "--output", str(tmp_path / "grown")]
    script().main([*args, "--encoder-layers", "3", "--decoder-layers", "2"])
    grown = DynamiteModel.from_pretrained(tmp_path / "grown")
    assert (grown.config.encoder_layers, grown.config.decoder_layers) == (3, 2)
    assert isinstance(DynamiteImageProcessor.from_pretrained(tmp_path / "grown"), DynamiteImageProcessor)
    assert "3 encoder / 2 decoder layers (was 2 / 1)" in capsys.readouterr().out
    for extra, message in [
        (["--encoder-layers", "1", "--decoder-layers", "1"], "must be at least the model's 2 / 1, got 1 / 1"),
        (["--model", str(tmp_path / "nothing"), "--encoder-layers", "3", "--decoder-layers", "1"], "no config.json"),
    ]:
        with pytest.raises(SystemExit):
            script().main([*args, *extra])
        assert message in capsys.readouterr().err
    without_decoder, path = saved(tmp_path / "plain", decoder_layers=0)
    with pytest.raises(ValueError, match="without one"):
        script().grow(path, encoder_layers=without_decoder.config.encoder_layers, decoder_layers=1)
