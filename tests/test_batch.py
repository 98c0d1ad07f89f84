"""The offline batch path: clicks JSON in, files out, through the dynamite-segment entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_modeling import tiny_model

from dynamite_hf import DynamitePredictor
from dynamite_hf.batch import main, read_jobs


@pytest.fixture
def model_dir(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_writes_every_format_for_every_image(model_dir, tmp_path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
    clicks = {
        "images": [
            {
                "image": "images/a.png",
                "clicks": [{"row": 10, "col": 10, "instance": 0}, {"row": 30, "col": 50, "instance": 1}],
            },
            {
                "image": "images/b.jpg",
                "clicks": [{"row": 5, "col": 5, "instance": None}, {"row": 20, "col": 20, "instance": 0}],
            },
        ]
    }
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    main(["--model", str(model_dir), "--clicks", str(tmp_path / "clicks.json"), "--output", str(tmp_path / "out")])
    for stem, instances in (("a", 2), ("b", 1)):
        folder = tmp_path / "out" / stem
        label_map = np.asarray(Image.open(folder / "label_map.png"))
        assert label_map.shape == (50, 70) and label_map.max() <= instances
        assert len(json.loads((folder / "coco.json").read_text())["annotations"]) == instances
        assert (folder / "overlay.png").is_file() and (folder / "label_map_palette.png").is_file()
        assert len(list(folder.glob("instance_*.png"))) == instances  # one per clicked instance


def test_an_empty_instance_is_still_exported_and_named(tmp_path, monkeypatch, capsys) -> None:
    """Instances 0 and 1 clicked, instance 1's mask empty: both are written, and the summary says which is empty."""
    tiny_model(num_static_bg_queries=0).save_pretrained(tmp_path / "model")  # no background: instance 0 gets pixels
    predicted = DynamitePredictor.label_map.fget  # every pixel to instance 0: instance 1's mask is empty
    monkeypatch.setattr(DynamitePredictor, "label_map", property(lambda self: (predicted(self) > 0).astype(np.int32)))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    clicks = {"images": [{"image": "a.png", "clicks": [{"row": 10, "col": 10, "instance": 0}]}]}
    clicks["images"][0]["clicks"].append({"row": 30, "col": 50, "instance": 1})
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    arguments = ["--model", str(tmp_path / "model"), "--clicks", str(tmp_path / "clicks.json")]
    main([*arguments, "--output", str(tmp_path / "out")])
    folder = tmp_path / "out" / "a"
    assert sorted(p.name for p in folder.glob("instance_*.png")) == ["instance_000.png", "instance_001.png"]
    assert not np.asarray(Image.open(folder / "instance_001.png")).any()
    assert [a["instance"] for a in json.loads((folder / "coco.json").read_text())["annotations"]] == [0, 1]
    assert "a.png: instance 1 has an empty mask" in capsys.readouterr().out


def test_bad_clicks_files_are_named(tmp_path) -> None:
    (tmp_path / "bad.json").write_text('{"images": [{"image": "x.png", "clicks": [{"row": 1}]}]}')
    with pytest.raises(ValueError, match=r"images\[0\].clicks\[0\] needs row, col and instance"):
        read_jobs(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        read_jobs(tmp_path / "broken.json")
