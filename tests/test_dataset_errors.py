"""Building and loading training data as researchers get it wrong: a mistyped path never reaches the Hub, a raw
folder is pointed at scripts/build_dataset.py, figure-ground masks are not read as instance ids, and everything
a build skips is counted and named."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamite_hf.data.instances import (
    InstanceExample,
    SkipCounter,
    build_dataset,
    is_hub_id,
    load_instance_dataset,
)
from dynamite_hf.data.sources import read_source

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128-seg"
requires_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} is not present")


@pytest.fixture
def no_hub(monkeypatch) -> list[str]:
    """Records every name sent to `datasets.load_dataset` (the Hub) instead of sending it."""
    import datasets

    sent: list[str] = []

    def load_dataset(name, *args, **kwargs):
        sent.append(name)
        raise ConnectionError(f"{name} was sent to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return sent


@pytest.mark.parametrize("name", ["data/coco129", "./coco129", "runs/data/coco129", "coco129", "~/coco129"])
def test_a_mistyped_local_path_is_never_looked_up_on_the_hub(name, tmp_path, monkeypatch, no_hub) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coco128").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"--dataset {name}: no such folder.*scripts/build_dataset.py"):
        load_instance_dataset(name)
    assert no_hub == []


def test_the_missing_folder_error_names_a_near_match(tmp_path, monkeypatch, no_hub) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "coco128").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"did you mean data/coco128\?"):
        load_instance_dataset("data/coco129")


def test_owner_slash_name_goes_to_the_hub_when_no_local_folder_claims_it(tmp_path, monkeypatch, no_hub) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("someone/coco-instances")
    with pytest.raises(ConnectionError):
        load_instance_dataset("someone/coco-instances")
    assert no_hub == ["someone/coco-instances"]
    (tmp_path / "someone").mkdir()  # now `someone/...` is a local path
    assert not is_hub_id("someone/coco-instances")


@requires_coco128
def test_a_raw_folder_is_pointed_at_the_build_command(no_hub) -> None:
    with pytest.raises(ValueError, match=rf"not a dataset built by .*--source yolo:{COCO128} --output"):
        load_instance_dataset(str(COCO128))
    assert no_hub == []


@requires_coco128
def test_train_accelerate_names_the_dataset_error_before_building_anything(tmp_path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, str(ROOT / "train_accelerate.py"), "--output-dir", str(tmp_path / "run")]
    result = subprocess.run([*command, "--dataset", str(COCO128)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2
    assert f"--dataset {COCO128}: this folder is not a dataset" in result.stderr
    assert "python scripts/build_dataset.py --source yolo:" in result.stderr
    assert not (tmp_path / "run").exists()


def _write_pairs(root: Path, masks: list[np.ndarray], suffix: str = ".png") -> tuple[Path, Path]:
    images, mask_folder = root / "images", root / "masks"
    images.mkdir(parents=True)
    mask_folder.mkdir()
    for index, mask in enumerate(masks):
        Image.fromarray(np.full((*mask.shape, 3), 90, dtype=np.uint8)).save(images / f"{index:03d}.png")
        Image.fromarray(mask).save(mask_folder / f"{index:03d}{suffix}")
    return images, mask_folder


def _boxes(*boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """A 40 x 40 uint8 mask painted with `(top, bottom, left, right, value)` boxes in order."""
    mask = np.zeros((40, 40), dtype=np.uint8)
    for top, bottom, left, right, value in boxes:
        mask[top:bottom, left:right] = value
    return mask


@pytest.mark.parametrize(
    "mask",
    [
        _boxes((5, 30, 5, 30, 255)),  # 0 / 255
        _boxes((4, 31, 4, 31, 128), (5, 30, 5, 30, 255)),  # with an uncertain band
    ],
    ids=["0-255", "0-128-255"],
)
def test_folder_refuses_figure_ground_masks_and_names_binary(mask, tmp_path) -> None:
    images, masks = _write_pairs(tmp_path, [mask])
    with pytest.raises(ValueError, match=rf"figure-ground mask.*binary:{images}:{masks}"):
        read_source(f"folder:{images}:{masks}")
    # read as binary, the 255 region is the object (the 128 band is not)
    (example,) = read_source(f"binary:{images}:{masks}")
    assert len(example.masks) == 1 and example.masks[0].sum() == 25 * 25


def test_folder_still_reads_instance_ids_with_void(tmp_path) -> None:
    ids = _boxes((0, 40, 0, 2, 255), (5, 15, 5, 15, 1), (20, 30, 5, 15, 2))
    images, masks = _write_pairs(tmp_path, [ids])
    (example,) = read_source(f"folder:{images}:{masks}")
    assert [m.sum() for m in example.masks] == [100, 100] and example.ignore.sum() == 80


def test_folder_skips_and_names_a_later_figure_ground_mask(tmp_path) -> None:
    ids = _boxes((5, 15, 5, 15, 1))
    binary = _boxes((5, 30, 5, 30, 255))
    images, masks = _write_pairs(tmp_path, [ids] * 9 + [binary])  # past the masks checked up front
    skipped = SkipCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        examples = list(read_source(f"folder:{images}:{masks}", skipped))
    assert len(examples) == 9
    assert skipped.names == {"figure-ground mask in an instance-id folder (use binary:)": ["masks/009.png"]}


def test_every_skipped_file_is_counted_and_named(tmp_path) -> None:
    """YOLO: an image without labels, labels without an image, a polygon too short; folders: an image without a
    mask, a mask without an image."""
    root = tmp_path / "yolo"
    (root / "images" / "train2017").mkdir(parents=True)
    (root / "labels" / "train2017").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.new("RGB", (32, 32), (90, 90, 90)).save(root / "images" / "train2017" / f"{stem}.jpg")
    (root / "labels" / "train2017" / "a.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.9\n1 0.2 0.2 0.5 0.5\n")
    (root / "labels" / "train2017" / "orphan.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.9\n3 0.1 0.1 0.9 0.1 0.5 0.9\n")
    skipped = SkipCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build_dataset(read_source(f"yolo:{root}", skipped), skipped)
    assert len(dataset) == 1 and dataset[0]["sample_id"] == "yolo/a"
    assert skipped.names == {
        "image without a label file": ["images/train2017/b.jpg"],
        "polygon of fewer than 3 points": ["a.txt:2"],
        "label file without an image": ["labels/train2017/orphan.txt (2 instances)"],
    }
    summary = skipped.summary()
    assert "label file without an image (1): labels/train2017/orphan.txt (2 instances)" in summary

    ids = _boxes((5, 15, 5, 15, 1))
    images, masks = _write_pairs(tmp_path / "folder", [ids, ids])
    (images / "extra.png").write_bytes((images / "000.png").read_bytes())
    (masks / "001.png").rename(masks / "lonely.png")
    skipped = SkipCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        examples = list(read_source(f"folder:{images}:{masks}", skipped))
    assert [e.sample_id for e in examples] == ["folder/000"]
    assert skipped.names == {
        "image without a mask file": ["images/001.png", "images/extra.png"],
        "mask file without an image": ["masks/lonely.png"],
    }


def test_a_build_that_keeps_nothing_says_why(tmp_path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    empty = [InstanceExample(f"x/{i}", tmp_path / "image.png", [np.zeros((32, 32), dtype=bool)]) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"(?s)no usable image: every example was skipped.*empty mask \(3\)"):
            build_dataset(empty)


def build_script(argv: list[str], capsys) -> tuple[int, str, str]:
    """scripts/build_dataset.py in this process: (exit status, stdout, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dataset_script", ROOT / "scripts" / "build_dataset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    status = 0
    try:
        script.main(argv)
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@requires_coco128
def test_build_dataset_summary_names_what_coco128_seg_loses(tmp_path, capsys) -> None:
    """coco128-seg ships two images without labels and two label files (12 instances) without images."""
    status, out, err = build_script(["--source", f"yolo:{COCO128}", "--output", str(tmp_path / "coco128")], capsys)
    assert status == 0, err[-2000:]
    assert "126 images, 929 instances" in out
    assert "skipped 4:" in out
    assert "images/train2017/000000000250.jpg, images/train2017/000000000508.jpg" in out
    assert "labels/train2017/000000000656.txt (3 instances), labels/train2017/000000000659.txt (9 instances)" in out


def test_build_dataset_stops_with_the_reason_when_nothing_is_usable(tmp_path, capsys) -> None:
    ids = _boxes((5, 30, 5, 30, 255))
    images, masks = _write_pairs(tmp_path / "raw", [ids])
    output = ["--output", str(tmp_path / "out")]
    status, _, err = build_script([*output, "--source", f"folder:{images}:{masks}"], capsys)
    assert status == 2 and f"binary:{images}:{masks}" in err
    (masks / "000.png").unlink()
    status, _, err = build_script([*output, "--source", f"binary:{images}:{masks}"], capsys)
    assert status == 1
    assert "no usable image: every example was skipped" in err
    assert "image without a mask file (1): images/000.png" in err
    assert not (tmp_path / "out").exists()
