"""scripts/evaluate.py end to end on a small id-mask folder dataset with a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_modeling import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"


def evaluate_main(argv):
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


@pytest.fixture
def folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "images" / f"{name}.jpg"
        )
        ids = np.zeros((48, 64), dtype=np.uint8)
        ids[5:20, 5:30], ids[25:45, 30:60] = 1, 2
        Image.fromarray(ids).save(tmp_path / "data" / "masks" / f"{name}.png")
    tiny_model().save_pretrained(tmp_path / "model")
    return tmp_path


@pytest.mark.parametrize(("mode", "key"), [("single", "NoC@90"), ("multi", "NCI")])
def test_evaluate_writes_table_json_and_plot(folder_dataset, mode, key, capsys) -> None:
    output = folder_dataset / f"out_{mode}"
    evaluate_main(
        ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset / "data")]
        + ["--mode", mode, "--strategy", "worst", "--max-clicks", "3", "--output", str(output)]
    )
    metrics = json.loads((output / "results.json").read_text())["metrics"]
    assert key in metrics and metrics["first_click_s"] > 0
    if mode == "single":
        assert metrics["samples"] == 4 and 1 <= metrics["NoC@90"] <= 3 and (output / "miou_per_click.png").is_file()
    else:
        assert metrics["images"] == 2 and metrics["objects"] == 4 and 1 <= metrics["NCI"] <= 10
    assert key.split("@")[0] in (output / "results.md").read_text()
    assert "|" in capsys.readouterr().out


def test_evaluate_resize_options_reach_the_model(folder_dataset, monkeypatch) -> None:
    from dynamite_hf import DynamiteModel

    seen = []
    original = DynamiteModel.get_image_features

    def recording(self, pixel_values):
        seen.append(tuple(pixel_values.shape[-2:]))
        return original(self, pixel_values)

    monkeypatch.setattr(DynamiteModel, "get_image_features", recording)
    output = folder_dataset / "out_resized"
    evaluate_main(
        ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset / "data")]
        + ["--max-clicks", "2", "--short-edge", "96", "--max-size", "160", "--output", str(output)]
    )
    # 48x64 images: the short edge goes to 96, so 96x128, already divisible by 32.
    assert seen and set(seen) == {(96, 128)}
    assert json.loads((output / "results.json").read_text())["resize"] == {"short_edge": 96, "max_size": 160}


def test_evaluate_rejects_a_non_positive_resize(folder_dataset, capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate_main(
            ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset)]
            + ["--short-edge", "0"]
        )
    error = capsys.readouterr().err
    assert "--short-edge" in error and "positive whole number of pixels, got '0'" in error
