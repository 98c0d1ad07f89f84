"""The evaluation protocol: the next-click rule on hand-made masks, oracle segmenters with known answers,
hand-computed multi-instance metrics, and the readers on the real benchmark sets."""

from __future__ import annotations

import numpy as np
import pytest
from reference import DATA, requires_data

from dynamite_hf import Click
from dynamite_hf.data.benchmarks import EvaluationSample, read_dataset
from dynamite_hf.evaluation import (
    Clicker,
    distance_transform,
    evaluate_multi_instance,
    evaluate_single_instance,
    multi_instance_metrics,
    single_instance_metrics,
)
from dynamite_hf.evaluation.protocols import MultiInstanceResult, Timings


def square_map(height=21, width=21, box=(5, 16, 5, 16)) -> np.ndarray:
    instance_map = np.zeros((height, width), dtype=np.int32)
    top, bottom, left, right = box
    instance_map[top:bottom, left:right] = 1
    return instance_map


# -- clicker -----------------------------------------------------------------------------------------------


def test_distance_transform_counts_the_border_as_boundary() -> None:
    full = np.ones((5, 7), dtype=bool)
    assert distance_transform(full)[2, 3] == 3.0  # 3 px from the top/bottom border (padding)
    assert distance_transform(full)[0, 0] == 1.0


def test_initial_click_is_the_first_raster_maximum_of_the_distance_transform() -> None:
    clicker = Clicker(square_map(box=(5, 15, 5, 15)))  # 10x10 square: four centre pixels tie
    (click,) = clicker.initial_clicks()
    assert (click.instance, click.row, click.col, click.timestamp) == (0, 9.0, 9.0, 0)


def test_false_negatives_give_a_positive_click_at_their_centre() -> None:
    clicker = Clicker(square_map())
    clicker.initial_clicks()
    prediction = np.zeros((1, 21, 21), dtype=bool)  # nothing predicted: all of the square is missed
    prediction[0, 5:16, 5:8] = True  # ...but its left band
    click = clicker.next_click(0, prediction)
    # FN = rows 5..15 x cols 8..15, whose DT peaks on row 10 at cols 11-12; the disk around the initial click
    # (10, 10) blocks col 11 and 12 on row 10 (distance <= 5), so the first free maximum is found elsewhere.
    assert click.instance == 0 and click.timestamp == 1
    fn = square_map().astype(bool) & ~prediction[0]
    blocked = (np.arange(21)[:, None] - 10) ** 2 + (np.arange(21)[None, :] - 10) ** 2 <= 25
    expected = distance_transform(fn) * ~blocked
    assert expected[int(click.row), int(click.col)] == expected.max()
    assert int(np.argmax(expected)) == int(click.row) * 21 + int(click.col)


def test_false_positives_give_a_background_click_owned_by_the_ground_truth() -> None:
    clicker = Clicker(square_map())
    clicker.initial_clicks()
    prediction = np.ones((1, 21, 21), dtype=bool)  # everything predicted: the frame around is wrong
    click = clicker.next_click(0, prediction)
    assert click.instance is None  # owner read from the ground truth: background
    assert square_map()[int(click.row), int(click.col)] == 0


def test_click_owned_by_another_object() -> None:
    instance_map = square_map()
    instance_map[0:4, 0:21] = 2  # a second object along the top
    clicker = Clicker(instance_map)
    clicker.initial_clicks()
    prediction = np.zeros((2, 21, 21), dtype=bool)
    prediction[0] = instance_map > 0  # object 0 swallowed object 1
    click = clicker.next_click(0, prediction)
    assert click.instance == 1


def test_no_error_left_clicks_at_the_origin() -> None:
    clicker = Clicker(square_map())
    clicker.initial_clicks()
    click = clicker.next_click(0, square_map()[None].astype(bool))
    assert (click.row, click.col, click.instance) == (0.0, 0.0, None)


def test_ignored_pixels_neither_count_nor_receive_clicks() -> None:
    ignore = np.zeros((1, 21, 21), dtype=bool)
    ignore[0, :, 11:] = True
    clicker = Clicker(square_map(), ignore)
    (click,) = clicker.initial_clicks()
    assert click.col < 11
    prediction = square_map()[None].astype(bool)
    prediction[0, :, 11:] = False  # wrong only where ignored
    assert clicker.ious(prediction) == [1.0]


# -- protocols with oracles --------------------------------------------------------------------------------


class Oracle:
    """Returns the ground truth from the k-th prediction of an image on (k = 1: perfect at once), empty masks
    before that; k = None: never anything."""

    def __init__(self, succeed_at: int | None):
        self.succeed_at = succeed_at

    def start(self, sample: EvaluationSample) -> None:
        self.sample, self.calls = sample, 0

    def predict(self, clicks: list[Click]) -> np.ndarray:
        self.calls += 1
        truth = self.sample.instance_map[None] == np.arange(1, self.sample.num_objects + 1)[:, None, None]
        perfect = self.succeed_at is not None and self.calls >= self.succeed_at
        return truth if perfect else np.zeros_like(truth)


def samples(count: int = 3, objects: int = 1) -> list[EvaluationSample]:
    result = []
    for index in range(count):
        instance_map = np.zeros((40, 40), dtype=np.int32)
        for k in range(objects):
            instance_map[2 + 12 * k : 10 + 12 * k, 5:30] = k + 1
        result.append(EvaluationSample(f"s{index}", None, instance_map))
    return result


@pytest.mark.parametrize(("succeed_at", "expected_noc", "expected_nfo"), [(1, 1.0, 0), (4, 4.0, 0), (None, 20.0, 3)])
def test_single_instance_oracles(succeed_at, expected_noc, expected_nfo) -> None:
    result = evaluate_single_instance(Oracle(succeed_at), samples(), progress=False)
    metrics = single_instance_metrics(result)
    assert metrics["NoC@85"] == metrics["NoC@90"] == expected_noc
    assert metrics["NFO@85"] == metrics["NFO@90"] == expected_nfo
    assert len(metrics["mIoU_per_click"]) == 20 and metrics["mIoU_per_click"][-1] == (
        0.0 if succeed_at is None else 1.0
    )
    assert all(len(ious) == (20 if succeed_at is None else succeed_at) for ious in result.ious)


@pytest.mark.parametrize("strategy", ["best", "worst", "random", "round_robin", "wlb", "max_dt"])
def test_multi_instance_oracles(strategy) -> None:
    perfect = multi_instance_metrics(evaluate_multi_instance(Oracle(1), samples(2, 3), strategy, progress=False))
    assert (perfect["NCI"], perfect["NFO"], perfect["NFI"], perfect["mIoU"]) == (1.0, 0, 0, 1.0)
    later = multi_instance_metrics(evaluate_multi_instance(Oracle(5), samples(2, 3), strategy, progress=False))
    assert later["NCI"] == pytest.approx((3 + 4) / 3) and later["NFO"] == 0
    never = evaluate_multi_instance(Oracle(None), samples(2, 3), strategy, progress=False)
    metrics = multi_instance_metrics(never)
    assert never.interactions == [30, 30] and (metrics["NCI"], metrics["NFO"], metrics["NFI"]) == (10.0, 6, 2)
    assert metrics["mIoU"] == 0.0


def test_multi_instance_metrics_by_hand() -> None:
    result = MultiInstanceResult(
        sample_ids=["a", "b"],
        final_ious=[[0.9, 0.5], [0.86, 0.95, 0.2]],
        interactions=[20, 9],
        iou_threshold=0.85,
        timings=Timings(),
    )
    metrics = multi_instance_metrics(result)
    assert metrics["NCI"] == pytest.approx((20 / 2 + 9 / 3) / 2)
    assert (metrics["NFO"], metrics["NFI"]) == (2, 2)
    assert metrics["mIoU"] == pytest.approx(((0.9 + 0.5) / 2 + (0.86 + 0.95 + 0.2) / 3) / 2, rel=1e-6)


class FixedIoU:
    """Objects 0 and 1 stay wrong (empty) forever; the order of refinement is then the strategy's."""

    def start(self, sample):
        self.sample = sample

    def predict(self, clicks):
        return np.zeros((self.sample.num_objects, 40, 40), dtype=bool)


def test_wlb_moves_on_after_ten_clicks_on_the_worst_object() -> None:
    clicks_seen = []

    class Recorder(FixedIoU):
        def predict(self, clicks):
            clicks_seen[:] = clicks
            return super().predict(clicks)

    evaluate_multi_instance(Recorder(), samples(1, 2), "wlb", progress=False)
    # Both IoUs stay 0. The worst-ordered object takes corrective clicks until 10 were aimed at it (its initial
    # click included), then the other one does. With an empty prediction a click lands on its target, or at
    # (0, 0) on the background once the target's free error pixels are used up by the exclusion disks.
    owners = [c.instance for c in clicks_seen[2:]]
    assert len(clicks_seen) == 20
    first = owners[0]
    assert set(owners[:9]) <= {first, None} and owners[9] == 1 - first


def test_random_strategy_is_reproducible_and_seeded() -> None:
    def run(seed_id):
        return evaluate_multi_instance(Oracle(None), samples(2, 3), "random", seed_id=seed_id, progress=False)

    assert run(0).interactions == run(0).interactions


# -- readers on the real sets ------------------------------------------------------------------------------


@requires_data
def test_grabcut_reader_counts_and_ignore_band() -> None:
    grabcut = read_dataset("grabcut", DATA / "GrabCut")
    assert len(grabcut) == 50 and all(s.num_objects == 1 for s in grabcut)
    assert sum(s.ignore is not None and s.ignore.any() for s in grabcut) >= 40
    for sample in grabcut:
        assert sample.image_path.is_file()
        assert not (sample.instance_map.astype(bool) & sample.ignore).any()


@requires_data
def test_davis_reader_single_and_multi() -> None:
    single = read_dataset("davis", DATA / "DAVIS")
    multi = read_dataset("davis", DATA / "DAVIS", mode="multi")
    assert len(single) == len(multi) == 345
    assert all(s.num_objects == 1 for s in single)
    assert sum(s.num_objects > 1 for s in multi) == 133 and max(s.num_objects for s in multi) == 4
    assert sum(s.ignore is not None for s in single) == 1  # the one frame with void pixels
    for one, many in zip(single, multi, strict=True):
        assert np.array_equal(one.instance_map > 0, many.instance_map > 0)


def test_unknown_dataset_and_missing_folders_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'sbdx'"):
        read_dataset("sbdx", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing folder"):
        read_dataset("grabcut", tmp_path)


# -- readers on small files in the native layouts ----------------------------------------------------------


def _write_image(path, height=20, width=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)


def test_sbd_reader_reads_gtinst_mat(tmp_path) -> None:
    from scipy.io import savemat

    segmentation = np.zeros((20, 30), dtype=np.uint8)
    segmentation[2:8, 2:10], segmentation[10:18, 12:28] = 1, 2
    (tmp_path / "inst").mkdir()
    savemat(tmp_path / "inst" / "2008_000001.mat", {"GTinst": {"Segmentation": segmentation}})
    _write_image(tmp_path / "img" / "2008_000001.jpg")
    (tmp_path / "val.txt").write_text("2008_000001\n")
    single = read_dataset("sbd", tmp_path)
    assert [s.sample_id for s in single] == ["2008_000001_0", "2008_000001_1"]
    multi = read_dataset("sbd", tmp_path, mode="multi")
    assert multi[0].num_objects == 2 and np.array_equal(multi[0].instance_map > 0, segmentation > 0)


def test_pascal_voc_reader_treats_255_as_void(tmp_path) -> None:
    from PIL import Image

    ids = np.zeros((20, 30), dtype=np.uint8)
    ids[2:8, 2:10], ids[10:18, 12:28], ids[0, :] = 1, 2, 255
    (tmp_path / "SegmentationObject").mkdir()
    palette_image = Image.fromarray(ids, mode="P")
    palette_image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    palette_image.save(tmp_path / "SegmentationObject" / "x.png")
    _write_image(tmp_path / "JPEGImages" / "x.jpg")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("x\n")
    samples_ = read_dataset("pascal_voc", tmp_path)
    assert len(samples_) == 2 and samples_[0].ignore[0].all() and samples_[0].ignore[1:].sum() == 0


def test_coco_reader_rasterises_polygons_and_drops_crowds(tmp_path) -> None:
    import json

    _write_image(tmp_path / "val2017" / "000001.jpg")
    document = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 48.0,
                "bbox": [2, 2, 8, 6],
                "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 1,
                "area": 10.0,
                "bbox": [0, 0, 5, 2],
                "segmentation": [[0, 0, 5, 0, 5, 2, 0, 2]],
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(document))
    (sample,) = read_dataset("coco", tmp_path)
    assert sample.num_objects == 1 and sample.image_path.name == "000001.jpg"
    assert sample.instance_map[5, 6] == 1 and sample.instance_map[15, 25] == 0


@requires_data
def test_readers_round_trip_through_a_datasets_dataset(tmp_path) -> None:
    from datasets import load_from_disk

    from dynamite_hf.data.instances import from_hf_row, to_hf_dataset

    original = read_dataset("davis", DATA / "DAVIS", mode="multi")[:3] + read_dataset("grabcut", DATA / "GrabCut")[:2]
    to_hf_dataset(original).save_to_disk(tmp_path / "ds")
    dataset = load_from_disk(tmp_path / "ds")
    assert len(dataset) == 5 and dataset[0]["image"].size == (854, 480)
    for sample, row in zip(original, dataset, strict=True):
        restored = from_hf_row(row)
        assert restored.sample_id == sample.sample_id
        assert np.array_equal(restored.instance_map, sample.instance_map)
        assert (restored.ignore is None) == (sample.ignore is None)


def test_an_object_covered_by_smaller_ones_stays_as_an_empty_object() -> None:
    from dynamite_hf.data.benchmarks import paint_instances

    big = np.zeros((20, 20), dtype=bool)
    big[2:6, 2:6] = True
    small = big.copy()  # same pixels, painted over the earlier (equal-area, so stable) object
    instance_map = paint_instances([big, small])
    sample = EvaluationSample("x", None, instance_map, None, object_count=2)
    assert instance_map.max() == 2 and not (instance_map == 1).any()
    result = evaluate_multi_instance(Oracle(1), [sample], "worst", progress=False)
    assert len(result.final_ious[0]) == 2  # the empty object is kept (its IoU is undefined: NaN, a failure)


# -- the original's numbering and summaries (spec section 3) ----------------------------------------------


def _two_objects_small_first() -> tuple[np.ndarray, np.ndarray]:
    """Annotation order small, big (so area order is the reverse)."""
    small = np.zeros((40, 60), dtype=bool)
    small[5:15, 5:15] = True
    big = np.zeros((40, 60), dtype=bool)
    big[10:35, 25:55] = True
    return small, big


def test_objects_are_numbered_by_area_not_by_annotation_order() -> None:
    from dynamite_hf.data.benchmarks import paint_instances

    small, big = _two_objects_small_first()
    instance_map = paint_instances([small, big])
    assert np.array_equal(instance_map == 1, big) and np.array_equal(instance_map == 2, small)
    assert np.array_equal(paint_instances([big, small]), instance_map)


def test_folder_reader_numbers_objects_by_area(tmp_path) -> None:
    from PIL import Image

    from dynamite_hf.data.benchmarks import read_dataset

    small, big = _two_objects_small_first()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    ids = np.zeros((40, 60), dtype=np.uint8)
    ids[small], ids[big] = 1, 2
    Image.fromarray(ids).save(tmp_path / "masks" / "a.png")
    (sample,) = read_dataset("folder", tmp_path, mode="multi")
    assert np.array_equal(sample.instance_map == 1, big)


class Recorder:
    """Empty predictions; remembers the clicks of the last call."""

    def start(self, sample):
        self.count = sample.num_objects

    def predict(self, clicks):
        self.clicks = list(clicks)
        return np.zeros((self.count, 40, 60), dtype=bool)


@pytest.mark.parametrize("strategy", ["random", "worst", "round_robin"])
def test_a_multi_instance_run_does_not_depend_on_the_annotation_order(strategy) -> None:
    from dynamite_hf.data.benchmarks import paint_instances

    small, big = _two_objects_small_first()
    runs = []
    for masks in ([small, big], [big, small]):
        recorder = Recorder()
        sample = EvaluationSample("a", None, paint_instances(masks))
        evaluate_multi_instance(recorder, [sample], strategy, progress=False)
        runs.append([(c.instance, c.row, c.col, c.timestamp) for c in recorder.clicks])
    assert runs[0] == runs[1]
    first = runs[0][0]
    assert big[int(first[1]), int(first[2])] and first[0] == 0 and first[3] == 0, "object 0 is the largest"


def test_training_instances_are_numbered_by_area() -> None:
    from dynamite_hf.training import select_instances

    small, big = _two_objects_small_first()
    instance_map = select_instances(
        np.stack([small, big]), np.array([100, 750]), np.random.default_rng(0), keep_fraction=1.0
    )
    assert np.array_equal(instance_map == 1, big) and np.array_equal(instance_map == 2, small)


def test_noc_is_printed_with_the_original_rounding() -> None:
    from dynamite_hf.evaluation.protocols import SingleInstanceResult, Timings
    from dynamite_hf.evaluation.report import single_instance_table

    # 40 samples whose NoC sum to 233: mean 5.825, which the original prints as 5.82 (and "{:.2f}" as 5.83).
    counts = [6] * 33 + [5] * 7
    ious = [[0.5] * (count - 1) + [0.95] for count in counts]
    metrics = single_instance_metrics(SingleInstanceResult([str(i) for i in range(40)], ious, 20, Timings()))
    assert metrics["NoC@90"] == 5.825 and metrics["NoC@90_printed"] == 5.82
    assert "| 5.82 | 5.82 |" in single_instance_table("x", metrics)
    assert metrics["IoU@NoC@90"] == pytest.approx(0.95)


def test_iou_at_noc_takes_the_click_that_reached_the_threshold_or_the_last() -> None:
    from dynamite_hf.evaluation.protocols import SingleInstanceResult, Timings

    ious = [[0.5, 0.86, 0.91], [0.2, 0.3]]
    metrics = single_instance_metrics(SingleInstanceResult(["a", "b"], ious, 3, Timings()))
    assert metrics["IoU@NoC@85"] == pytest.approx((0.86 + 0.3) / 2)
    assert metrics["IoU@NoC@90"] == pytest.approx((0.91 + 0.3) / 2)


def test_multi_instance_mean_iou_is_summed_in_float32_image_by_image_and_nci_suc() -> None:
    from dynamite_hf.evaluation.protocols import MultiInstanceResult, Timings

    rng = np.random.default_rng(5)
    final = [rng.random(int(rng.integers(1, 4))).astype(np.float32).tolist() for _ in range(300)]
    result = MultiInstanceResult([str(i) for i in range(300)], final, [3] * 300, 0.85, Timings())
    metrics = multi_instance_metrics(result)
    total = np.float32(0)
    for ious in final:
        total = np.float32(total + np.mean(np.array(ious, dtype=np.float32)))
    assert metrics["mIoU"] == float(total / np.float32(300))
    succeeded = [sum(np.float32(v) >= np.float32(0.85) for v in ious) for ious in final]
    assert metrics["NCI_suc"] == pytest.approx(np.mean([3 / s if s else 3 for s in succeeded]))
