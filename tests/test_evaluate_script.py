"""scripts/evaluate.py end to end on a small id-mask folder dataset with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_module import load_script
from tiny import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"


def evaluate_main(argv):
    load_script(SCRIPT).main(argv)


@pytest.mark.parametrize(("mode", "key"), [("single", "NoC@90"), pytest.param("multi", "NCI", marks=pytest.mark.slow)])
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
    from dynamite_hf import DynamiteImageProcessor

    seen = []
    original = DynamiteImageProcessor.preprocess

    def recording(self, *args, **kwargs):
        inputs = original(self, *args, **kwargs)
        seen.append(tuple(inputs["pixel_values"].shape[-2:]))
        return inputs

    monkeypatch.setattr(DynamiteImageProcessor, "preprocess", recording)
    output = folder_dataset / "out_resized"
    evaluate_main(
        ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset / "data")]
        + ["--max-clicks", "2", "--short-edge", "96", "--max-size", "160", "--output", str(output)]
    )
    # 48x64 images: the short edge goes to 96, so 96x128, already divisible by 32.
    assert seen and set(seen) == {(96, 128)}
    assert json.loads((output / "results.json").read_text())["resize"] == {"shortest_edge": 96, "longest_edge": 160}


def test_evaluate_rejects_a_non_positive_resize(folder_dataset, capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate_main(
            ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset)]
            + ["--short-edge", "0"]
        )
    error = capsys.readouterr().err
    assert "--short-edge" in error and "positive whole number of pixels, got '0'" in error


# -- sharded runs: accelerate launch with two CPU processes ------------------------------------------------------


@pytest.fixture(scope="module")
def five_images(tmp_path_factory):
    """Five images (an odd count: the shares differ in size) of two objects placed differently in each."""
    root = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(1)
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "masks").mkdir()
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            root / "data" / "images" / f"img{index}.jpg"
        )
        ids = np.zeros((48, 64), dtype=np.uint8)
        row, col = rng.integers(2, 20, 2)
        ids[row : row + 15, col : col + 20], ids[25:45, 30 + index : 60] = 1, 2
        Image.fromarray(ids).save(root / "data" / "masks" / f"img{index}.png")
    tiny_model().save_pretrained(root / "model")
    return root


def _without_timings(output: Path) -> tuple[str, list[list[str]]]:
    """results.json as text and results.md's cells, the seconds per click (which differ run to run) left out."""
    report = json.loads((output / "results.json").read_text())
    for key in ("first_click_s", "later_click_s"):
        report["metrics"].pop(key)
    rows = [line.split("|")[1:-3] for line in (output / "results.md").read_text().splitlines() if line]
    return json.dumps(report), rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "strategy", "per_sample"), [("single", "random", "samples"), ("multi", "worst", "final_ious")]
)
def test_two_processes_write_what_one_process_writes(five_images, tmp_path, mode, strategy, per_sample) -> None:
    from accelerate_launch import launch, one_thread

    arguments = ["--model", str(five_images / "model"), "--dataset", "folder", "--data-root", str(five_images / "data")]
    arguments += ["--mode", mode, "--strategy", strategy, "--max-clicks", "4", "--iou-threshold", "0.5"]
    with one_thread():
        evaluate_main([*arguments, "--output", str(tmp_path / "one")])
    run = launch([str(SCRIPT), *arguments, "--output", str(tmp_path / "two")])

    assert "(2 processes)" in run.stderr  # the main process's bar counts the samples of both
    one, two = _without_timings(tmp_path / "one"), _without_timings(tmp_path / "two")
    assert two == one
    results = json.loads(one[0])
    assert len(results[per_sample]) == (10 if mode == "single" else 5)
    assert len({json.dumps(v) for v in results[per_sample].values()}) > 1  # samples differ: a wrong order would show
    assert run.stdout.count("| folder |") == 1  # only the main process prints the table
    if mode == "single":
        plots = [np.asarray(Image.open(path / "miou_per_click.png")) for path in (tmp_path / "one", tmp_path / "two")]
        assert np.array_equal(*plots)


def test_sharded_random_strategies_need_opting_in(folder_dataset, monkeypatch, capsys) -> None:
    import dynamite_hf.sharding

    monkeypatch.setattr(dynamite_hf.sharding, "current_processes", lambda: dynamite_hf.sharding.ProcessGroup(0, 2))
    arguments = ["--model", str(folder_dataset / "model"), "--dataset", "folder", "--data-root", str(folder_dataset)]
    for strategy in ("random", "round_robin"):
        with pytest.raises(SystemExit):
            evaluate_main([*arguments, "--mode", "multi", "--strategy", strategy])
        error = capsys.readouterr().err
        assert f"--strategy {strategy} draws from one random stream" in error and "--allow-sharded-random" in error


@pytest.mark.slow
def test_a_sharded_random_run_runs_when_opted_in_and_says_how_its_stream_differs(five_images, tmp_path) -> None:
    from accelerate_launch import launch

    arguments = ["--model", str(five_images / "model"), "--dataset", "folder", "--data-root", str(five_images / "data")]
    arguments += ["--mode", "multi", "--strategy", "round_robin", "--iou-threshold", "0.5", "--allow-sharded-random"]
    launch([str(SCRIPT), *arguments, "--output", str(tmp_path / "two")])
    report = json.loads((tmp_path / "two" / "results.json").read_text())
    assert list(report["final_ious"]) == [f"img{index}" for index in range(5)] and report["metrics"]["images"] == 5
    assert "one per process (2 processes" in report["random_stream"]
