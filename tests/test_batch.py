"""The offline batch path: clicks JSON in, files out, through the dynamite-segment entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_model

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


def test_clicks_over_the_limits_are_refused_before_any_image_is_read(model_dir, tmp_path, capsys) -> None:
    """Issue 42: a clicks file over its size limit, or an image with more instances or clicks than allowed, is
    refused by name before any image is opened (the images here do not even exist); 0 lifts a limit."""
    many = [{"row": k, "col": k, "instance": k} for k in range(31)]  # 31 instances: over the default 30
    document = {"images": [{"image": "a.png", "clicks": many[:2]}, {"image": "b.png", "clicks": many}]}
    (tmp_path / "clicks.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"images\[1\] has 31 instances, more than --max-instances 30"):
        read_jobs(tmp_path / "clicks.json")
    with pytest.raises(ValueError, match=r"images\[1\] has 31 clicks, more than --max-clicks 20"):
        read_jobs(tmp_path / "clicks.json", max_instances=None, max_clicks=20)
    assert len(read_jobs(tmp_path / "clicks.json", max_instances=None)[1]["clicks"]) == 31
    size_mb = (tmp_path / "clicks.json").stat().st_size / 2**20
    with pytest.raises(ValueError, match=r"MB, more than --max-clicks-file-mb"):
        read_jobs(tmp_path / "clicks.json", max_instances=None, max_file_mb=size_mb / 2)
    arguments = ["--model", str(model_dir), "--clicks", str(tmp_path / "clicks.json"), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main(arguments)
    assert "has 31 instances, more than --max-instances 30" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main([*arguments, "--max-instances", "0", "--max-clicks", "-1"])
    assert "--max-clicks: expected a whole number (0: no limit), got '-1'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"images\[0\].clicks\[1\] needs row, col and instance .*got True"):
        bad = {"images": [{"image": "a.png", "clicks": [many[0], {"row": 1, "col": 1, "instance": True}]}]}
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        read_jobs(tmp_path / "bad.json")


def test_two_images_with_one_stem_are_refused(tmp_path) -> None:
    clicks = {"images": [{"image": f"{folder}/cat.jpg", "clicks": []} for folder in ("a", "b")]}
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    with pytest.raises(ValueError, match=r"images\[1\]: image 'b/cat.jpg' has the stem 'cat' of images\[0\]"):
        read_jobs(tmp_path / "clicks.json")


@pytest.mark.slow
def test_two_processes_write_the_files_one_process_writes(model_dir, tmp_path, capsys) -> None:
    """Five images (an odd count: the shares differ in size) segmented under accelerate launch with two CPU
    processes: every file equals a one-process run's, and the summary is printed once, in image order."""
    from accelerate_launch import launch, one_thread

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    entries = []
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{index}.png")
        points = rng.integers(2, 38, (3, 2))
        clicks = [{"row": int(r), "col": int(c), "instance": k % 2} for k, (r, c) in enumerate(points)]
        entries.append({"image": f"images/{index}.png", "clicks": clicks})
    (tmp_path / "clicks.json").write_text(json.dumps({"images": entries}))
    arguments = ["--model", str(model_dir), "--clicks", str(tmp_path / "clicks.json")]
    with one_thread():
        main([*arguments, "--output", str(tmp_path / "one")])
    run = launch(["-m", "dynamite_hf.batch", *arguments, "--output", str(tmp_path / "two")])

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 5 * 6 and sorted(two) == sorted(one)  # per image: 2 label maps, 2 instances, coco, overlay
    assert len({one[f"{i}/label_map.png"] for i in range(5)}) > 1  # the images differ: a mix-up would show
    assert [name for name in one if one[name] != two[name]] == []
    assert "(2 processes)" in run.stderr
    summary = capsys.readouterr().out.replace(str(tmp_path / "one"), str(tmp_path / "two"))
    assert summary.startswith("wrote 5 image folder(s)") and summary in run.stdout
    assert run.stdout.count("wrote 5 image folder(s)") == 1
