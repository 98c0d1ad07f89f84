"""`scripts/average_weights.py`: a weighted average of two save_pretrained folders of one architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from script_module import load_script
from tiny import tiny_model

from dynamite_hf import DynamiteImageProcessor, DynamiteModel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_weights.py"


def script():
    return load_script(SCRIPT)


def saved(folder: Path, seed: int, guided_filter_radius: int = 0, **overrides) -> Path:
    model = tiny_model(**overrides)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    DynamiteImageProcessor(guided_filter_radius=guided_filter_radius).save_pretrained(folder)
    return folder


def test_the_average_is_the_weighted_sum_with_the_first_models_config_and_processor(tmp_path, capsys) -> None:
    first = saved(tmp_path / "a", 1, guided_filter_radius=8)
    second = saved(tmp_path / "b", 2)
    script().main(
        ["--models", str(first), str(second), "--weights", "0.25", "0.75", "--output", str(tmp_path / "soup")]
    )
    soup = DynamiteModel.from_pretrained(tmp_path / "soup")
    a, b = DynamiteModel.from_pretrained(first).state_dict(), DynamiteModel.from_pretrained(second).state_dict()
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.25 * a[key] + 0.75 * b[key], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(value, a[key])
    assert DynamiteImageProcessor.from_pretrained(tmp_path / "soup").guided_filter_radius == 8
    assert "0.25 x" in capsys.readouterr().out


def test_bad_arguments_are_named(tmp_path, capsys) -> None:
    first = saved(tmp_path / "a", 1)
    wider = saved(tmp_path / "wide", 2, decoder_layers=3)
    cases = [
        (["--models", str(first)], "--models needs two or more folders, got 1"),
        (["--models", str(first), str(first), "--weights", "1"], "--weights needs one weight per model (2), got 1"),
        (["--models", str(first), str(first), "--weights", "0.5", "0.6"], "--weights must be positive and sum to 1"),
        (["--models", str(first), str(tmp_path / "nothing")], "is not a save_pretrained folder (no config.json)"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit):
            script().main([*args, "--output", str(tmp_path / "out")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not the architecture of"):
        script().main(["--models", str(first), str(wider), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
