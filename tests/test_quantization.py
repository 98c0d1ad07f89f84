"""The opt-in int8 mode: which layers it changes, how close its masks stay on real photos, and its refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluate_script import evaluate_main
from tiny import tiny_model

from dynamite_hf import Click, DynamiteModel, DynamitePredictor
from dynamite_hf.clicks import clicks_to_inputs
from dynamite_hf.data.benchmarks import read_dataset
from dynamite_hf.evaluation import Clicker
from dynamite_hf.inference.cpu import CpuClickDecoder
from dynamite_hf.inference.int8 import is_quantized, quantize_int8

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "dynamite-mobilenet-v2"
DATA = ROOT.parent / "shared" / "data"


def quantized_linears(model) -> set[str]:
    return {
        name
        for name, module in model.named_modules()
        if type(module).__name__ == "Linear" and "quantized" in type(module).__module__
    }


@pytest.mark.parametrize(
    ("parts", "prefixes"),
    [
        (["click"], ["interactive_transformer.decoder_layers."]),
        (["image"], ["pixel_decoder.encoder_layers."]),
        (["click", "image"], ["interactive_transformer.decoder_layers.", "pixel_decoder.encoder_layers."]),
    ],
)
def test_only_the_ffn_layers_of_the_chosen_parts_become_int8(parts, prefixes) -> None:
    model = tiny_model()
    float_linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    quantize_int8(model, parts)
    changed = quantized_linears(model)
    expected = {
        n
        for n in float_linears
        if any(n.startswith(p) for p in prefixes) and n.split(".")[-1] in ("linear1", "linear2")
    }
    assert changed == expected and changed
    assert is_quantized(model) and not is_quantized(tiny_model())
    clicks = clicks_to_inputs([[Click(0, 10.0, 10.0, 0, "model")]])
    with torch.inference_mode():  # still runs end to end, on the plain model and the CPU decoder
        for backend in (model, CpuClickDecoder(model)):
            logits = backend(pixel_values=torch.randn(1, 3, 64, 96), **clicks).pred_masks
            assert torch.isfinite(logits).all()


def test_bad_parts_double_quantization_and_saving_are_refused(tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"`parts` must be a non-empty selection of \('click', 'image'\), got \('mask',\)"
    ):
        quantize_int8(tiny_model(), ["mask"])
    model = quantize_int8(tiny_model(), ["click"])
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(model)
    with pytest.raises(ValueError, match="quantized layers .* cannot be saved"):
        model.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "GrabCut").is_dir(), reason="../shared/data/GrabCut is not present")
def test_int8_masks_stay_close_to_float32_on_real_photos() -> None:
    """The bundled model on five GrabCut photos, three protocol clicks each (following the float32 masks)."""
    fp32 = DynamiteModel.from_pretrained(BUNDLED)
    predictors = [DynamitePredictor(fp32), DynamitePredictor(quantize_int8(copy.deepcopy(fp32)))]
    agreement = []
    for sample in read_dataset("grabcut", DATA / "GrabCut")[:5]:
        clicker = Clicker(sample.instance_map, sample.ignore_masks)
        clicker.initial_clicks()
        for predictor in predictors:
            predictor.set_image(sample.image_path)
        for _ in range(3):
            masks = [predictor.set_clicks(list(clicker.clicks))[0] for predictor in predictors]
            agreement.append((masks[0] & masks[1]).sum() / max((masks[0] | masks[1]).sum(), 1))
            assert not np.array_equal(masks[0], np.zeros_like(masks[0]))
            clicker.next_click(0, masks[0][None])
    assert np.mean(agreement) > 0.98 and min(agreement) > 0.9, agreement


def test_evaluate_int8_quantizes_the_model_it_evaluates(folder_dataset, monkeypatch) -> None:
    import dynamite_hf.inference.int8

    quantized = []

    def recording(model, *args):
        quantized.append(quantize_int8(model, *args))
        return quantized[-1]

    monkeypatch.setattr(dynamite_hf.inference.int8, "quantize_int8", recording)
    output = folder_dataset / "out"
    evaluate_main(
        ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset / "data")]
        + ["--max-clicks", "2", "--int8", "--output", str(output)]
    )
    assert len(quantized) == 1 and is_quantized(quantized[0])
    assert {name.split(".")[0] for name in quantized_linears(quantized[0])} == {
        "interactive_transformer",
        "pixel_decoder",
    }
    assert (output / "results.json").is_file()
