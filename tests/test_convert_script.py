"""The converter script end to end: a released-style .pth in, a save_pretrained folder out, reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import CONFIGS, inputs, original_state_dict, outputs, reference_clicks, requires_reference
from script_module import load_script

from dynamite_hf import DynamiteImageProcessor, DynamiteModel
from dynamite_hf.clicks import clicks_to_inputs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_original_checkpoint.py"


def converter():
    return load_script(SCRIPT)


@requires_reference
def test_released_checkpoint_converts_and_reproduces_the_reference(tmp_path) -> None:
    # A detectron2 checkpoint: the weights under "model", next to training state the converter ignores.
    checkpoint = {"model": original_state_dict(CONFIGS["mit_b0"]), "iteration": 184374}
    torch.save(checkpoint, tmp_path / "model_final.pth")
    converter().main(["--checkpoint", str(tmp_path / "model_final.pth"), "--output", str(tmp_path / "converted")])
    assert {p.name for p in (tmp_path / "converted").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_dynamite.py",
        "pipeline_dynamite.py",
    }
    # A folder for remote code (tests/test_remote_code.py loads such folders without the package).
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"} and "image-segmentation" in config["custom_pipelines"]
    model = DynamiteModel.from_pretrained(tmp_path / "converted").eval()
    assert model.config.backbone_type == "mit"  # inferred from the keys
    assert isinstance(DynamiteImageProcessor.from_pretrained(tmp_path / "converted"), DynamiteImageProcessor)
    with torch.inference_mode():
        output = model(
            pixel_values=inputs()["img0.normalized_padded"], **clicks_to_inputs([reference_clicks("img0", "A")])
        )
    expected = outputs(CONFIGS["mit_b0"])["img0.A.pred_masks"]
    torch.testing.assert_close(output.pred_masks, expected, rtol=1e-4, atol=5e-4)


def test_a_pickle_with_code_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights only|unsupported global|weights_only"):
        converter().main(["--checkpoint", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "out")])


def test_foreign_checkpoint_is_refused_with_the_key(tmp_path) -> None:
    torch.save(
        {"model": {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7), "head.fc.weight": torch.zeros(2)}},
        tmp_path / "x.pth",
    )
    with pytest.raises(KeyError, match="head.fc.weight"):
        converter().main(["--checkpoint", str(tmp_path / "x.pth"), "--output", str(tmp_path / "out")])
