"""Training data where only the click tells the target (generated shapes, copy-paste composites, split DUTS
masks), and the loss term that supervises every click's own pixels."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dynamite_hf.clicks import Click
from dynamite_hf.data.instances import build_dataset, decode_rle, split_components
from dynamite_hf.data.sources import read_source
from dynamite_hf.data.synthetic import (
    color_regions,
    composite_image,
    copy_paste_composites,
    save_instance_folder,
    textured_parts_image,
    textured_shapes,
    textured_shapes_image,
)
from dynamite_hf.training.loss import click_disk_points, mask_losses


def test_textured_shapes_are_apart_alike_and_reproducible() -> None:
    for seed in range(5):
        image, masks = textured_shapes_image(np.random.default_rng(seed), size=128)
        again, masks_again = textured_shapes_image(np.random.default_rng(seed), size=128)
        assert np.array_equal(image, again) and all(np.array_equal(a, b) for a, b in zip(masks, masks_again))
        assert 2 <= len(masks) <= 5
        union = np.zeros(masks[0].shape, dtype=np.int32)
        for mask in masks:
            union += mask
        assert union.max() == 1, "shapes must not overlap"
        # One texture for every shape: the shapes' colour statistics agree far better than shape vs background.
        means = [image[m].mean(0) for m in masks]
        background = image[union == 0].mean(0)
        spread = max(np.abs(a - b).max() for a in means for b in means)
        assert spread < np.abs(means[0] - background).max() or spread < 40


def test_synthetic_source_builds_rows_of_the_schema(tmp_path) -> None:
    dataset = build_dataset(read_source("synthetic:3:5"))
    assert len(dataset) == 3
    row = dataset[0]
    masks = [decode_rle(m) for m in row["masks"]]
    assert len(masks) >= 2 and masks[0].shape == (row["height"], row["width"]) == (256, 256)
    assert row["areas"] == [int(m.sum()) for m in masks]
    # The same seed gives the same images, another seed others.
    assert build_dataset(read_source("synthetic:1:5"))[0]["areas"] == row["areas"]
    assert build_dataset(read_source("synthetic:1:6"))[0]["areas"] != row["areas"]
    with pytest.raises(ValueError, match="image count must be a positive integer, got 'many'"):
        read_source("synthetic:many")


def test_composites_paste_objects_with_their_own_pixels_and_occlusion() -> None:
    background = np.full((100, 200, 3), 10, dtype=np.uint8)
    square = np.ones((40, 40), dtype=bool)
    objects = [(np.full((40, 40, 3), 100 + 50 * k, dtype=np.uint8), square) for k in range(3)]
    for seed in range(10):
        image, masks = composite_image(background, objects, np.random.default_rng(seed), max_side=200, min_pixels=50)
        assert image.shape == (100, 200, 3)
        painted = np.zeros(image.shape[:2], dtype=np.int32)
        for mask in masks:
            painted += mask
            values = np.unique(image[mask][:, 0])
            assert len(values) == 1 and values[0] in (100, 150, 200), "a mask covers exactly one object's pixels"
        assert painted.max() <= 1, "visible masks never overlap (later objects occlude earlier ones)"
        assert np.all(image[painted == 0] == 10) or painted.sum() < sum(40 * 40 for _ in objects)


def test_composite_source_from_saved_datasets(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_dataset(textured_shapes(4, seed=1)).save_to_disk(tmp_path / "objects")
        build_dataset(textured_shapes(2, seed=2)).save_to_disk(tmp_path / "backgrounds")
        dataset = build_dataset(
            read_source(f"composite:{tmp_path / 'objects'}:{tmp_path / 'backgrounds'}:6:3"), cache_dir=str(tmp_path)
        )
    assert len(dataset) >= 1
    for row in dataset:
        masks = [decode_rle(m) for m in row["masks"]]
        assert len(masks) >= 2
        assert not np.any(np.sum(masks, axis=0) > 1)
        assert row["image"].format == "JPEG" and row["image"].size == (row["width"], row["height"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(f"composite:{tmp_path / 'missing'}:{tmp_path / 'backgrounds'}:3")
    with pytest.raises(ValueError, match="no instance of at least"):
        next(copy_paste_composites(dataset, dataset, 1, min_object_pixels=10**9))


def test_color_regions_are_disjoint_connected_parts_of_one_colour() -> None:
    """Four flat quadrants (two of them the same colour) and a small speck: every region lies in one quadrant
    (position splits a big flat area at some granularities, never across a colour edge), never spanning the two
    same-coloured but separate quadrants, and the speck is no region of its own."""
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[:60, :80] = (200, 30, 30)
    image[:60, 80:] = (30, 200, 30)
    image[60:, :80] = (30, 30, 200)
    image[60:, 80:] = (200, 30, 30)
    image[5:8, 5:8] = (250, 250, 250)
    quadrants = [np.zeros((120, 160), dtype=bool) for _ in range(4)]
    for mask, (rows, cols) in zip(
        quadrants,
        [
            (slice(0, 60), slice(0, 80)),
            (slice(0, 60), slice(80, 160)),
            (slice(60, 120), slice(0, 80)),
            (slice(60, 120), slice(80, 160)),
        ],
    ):
        mask[rows, cols] = True
    seen = 0
    for seed in range(8):
        masks = color_regions(image, np.random.default_rng(seed), max_fraction=0.3)
        again = color_regions(image, np.random.default_rng(seed), max_fraction=0.3)
        assert len(masks) == len(again) and all(np.array_equal(a, b) for a, b in zip(masks, again))
        assert not np.any(np.sum(masks, axis=0) > 1) if masks else True
        for mask in masks:
            # Within one quadrant, up to a band of about 2 px along its edges where the blur mixes colours.
            overlaps = sorted(int((mask & q).sum()) for q in quadrants)
            assert overlaps[-2] <= 2 * (60 + 80) and mask.sum() >= 0.01 * mask.size
            seen += 1
    assert seen > 0


def test_regions_source_from_a_saved_dataset(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_dataset(textured_shapes(3, seed=4)).save_to_disk(tmp_path / "photos")
        dataset = build_dataset(read_source(f"regions:{tmp_path / 'photos'}:5:2"), cache_dir=str(tmp_path))
        again = build_dataset(read_source(f"regions:{tmp_path / 'photos'}:5:2"), cache_dir=str(tmp_path))
    assert 1 <= len(dataset) <= 5 and dataset["areas"] == again["areas"]
    for row in dataset:
        masks = [decode_rle(m) for m in row["masks"]]
        assert 1 <= len(masks) <= 4 and not np.any(np.sum(masks, axis=0) > 1)
        assert all(0.01 <= m.mean() <= 0.5 for m in masks)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(f"regions:{tmp_path / 'missing'}:3")
    with pytest.raises(ValueError, match="regions takes 2-4"):
        read_source("regions:only")
    with pytest.raises(ValueError, match="regions kind must be one of"):
        read_source(f"regions:{tmp_path / 'photos'}:3:0:objects")


def test_background_regions_keep_the_objects_whole_and_stay_off_them(tmp_path) -> None:
    """`regions:...:background`: the photo's own objects come first, whole, and every region lies outside them
    with a gap, so no target asks for part of an object."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        photos = build_dataset(textured_shapes(4, seed=5, size=160))
        photos.save_to_disk(tmp_path / "photos")
        dataset = build_dataset(read_source(f"regions:{tmp_path / 'photos'}:6:3:background"), cache_dir=str(tmp_path))
    photo_masks = [[decode_rle(m) for m in row["masks"]] for row in photos]
    assert len(dataset) >= 4
    regions_seen = 0
    for row in dataset:
        masks = [decode_rle(m) for m in row["masks"]]
        # The leading masks are exactly one photo's objects (160 px photos are not rescaled).
        matches = [
            objects
            for objects in photo_masks
            if len(objects) < len(masks) and all(np.array_equal(a, b) for a, b in zip(objects, masks))
        ]
        assert matches, "the photo's objects must be the first targets, whole"
        objects, regions = masks[: len(matches[0])], masks[len(matches[0]) :]
        assert 1 <= len(regions) <= 4
        near = np.zeros(objects[0].shape, dtype=bool)
        for mask in objects:
            near |= mask
        distance = cv2.distanceTransform((~near).astype(np.uint8), cv2.DIST_L2, 5)
        for region in regions:
            gap = float(distance[region].min())
            assert gap > 4, f"a region comes within {gap:.1f} px of an object"
            regions_seen += 1
    assert regions_seen >= 4


def test_split_components_separates_objects_and_drops_specks() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:40, 10:40] = True
    mask[60:90, 50:95] = True
    mask[0, 99] = True  # a speck below 1 % of the image
    parts = split_components(mask)
    assert len(parts) == 2 and [int(p.sum()) for p in parts] == [900, 1350]
    single = np.zeros((100, 100), dtype=bool)
    single[20:50, 20:50] = True
    single[0, 0] = True
    assert len(split_components(single)) == 1 and split_components(single)[0] is single


def test_binary_components_source_splits_masks(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((60, 80, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.jpg")
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[5:25, 5:25] = 255
    mask[30:55, 40:75] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    whole = list(read_source(f"binary:{tmp_path / 'images'}:{tmp_path / 'masks'}"))
    split = list(read_source(f"binary-components:{tmp_path / 'images'}:{tmp_path / 'masks'}"))
    assert len(whole[0].masks) == 1 and len(split[0].masks) == 2


def test_save_instance_folder_round_trips_through_the_folder_reader(tmp_path) -> None:
    from dynamite_hf.data.benchmarks import read_dataset

    examples = list(textured_shapes(2, seed=4, size=96))
    save_instance_folder(examples, tmp_path)
    samples = read_dataset("folder", tmp_path, mode="multi")
    assert len(samples) == 2
    for sample, example in zip(samples, examples, strict=True):
        assert sample.num_objects == len(example.masks)
        assert sorted((sample.instance_map == k + 1).sum() for k in range(sample.num_objects)) == sorted(
            int(m.sum()) for m in example.masks
        )


def test_click_disk_points_sit_on_the_clicked_pixels() -> None:
    clicks = [Click(0, 10.0, 20.0, 0, frame="model"), Click(None, 0.0, 0.0, 1, frame="model")]
    points = click_disk_points(clicks, (64, 128), radius=1)
    # 5 pixels around the first click; the corner click keeps its 3 pixels inside the image.
    assert points.shape == (8, 2)
    assert torch.allclose(points[0], torch.tensor([(20 + 0.5) / 128, (9 + 0.5) / 64]))
    assert ((points >= 0) & (points <= 1)).all()


def stride4(logits: torch.Tensor) -> torch.Tensor:
    """Stride-4 logits as the model predicts them (the loss samples them at input-resolution points)."""
    return torch.nn.functional.avg_pool2d(logits[None], 4)[0]


def click_disobeying_prediction(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets `(2, size, size)` (a centred square and the background) and logits right everywhere but in an
    8-px block around the centre, where the square's pixels are predicted as background."""
    target = torch.zeros(2, size, size)
    target[0, 16:48, 16:48] = 1
    target[1] = 1 - target[0]
    logits = (target * 2 - 1) * 8
    logits[0, 28:36, 28:36], logits[1, 28:36, 28:36] = -8, 8
    return target, logits


def test_the_click_term_punishes_a_prediction_that_disobeys_its_click() -> None:
    """Logits right everywhere but in a small block around the click: the paper's sampled points rarely see it,
    the click points always do, and their weight scales the term."""
    size = 64
    target, logits = click_disobeying_prediction(size)
    points = [click_disk_points([Click(0, 32.0, 32.0, 0, frame="model")], (size, size), 2)]

    def bce(extra_points, weight=1.0):
        generator = torch.Generator().manual_seed(0)
        return mask_losses(
            [stride4(logits)],
            [target],
            2.0,
            num_points=256,
            generator=generator,
            extra_points=extra_points,
            extra_weight=weight,
        )[0]

    plain, with_clicks, weighted = bce(None), bce(points), bce(points, 20.0)
    assert with_clicks > plain * 1.5
    assert weighted > with_clicks * 2


def test_padded_click_points_weigh_nothing() -> None:
    """Image A has no clicks, so its click slots are padding at (0, 0), where its prediction is wrong. Image B
    costs ln 2 of BCE at any point (logit 0). With only uncertain points, A's sampled points are the same alone
    and in the batch, so the batch BCE is A's own plus ln 2 exactly when the padding slots count for nothing."""
    size = 64
    target_a = torch.ones(1, size, size)
    logits_a = torch.full((1, size, size), 8.0)
    logits_a[0, :8, :8] = -8.0
    target_b = torch.ones(1, size, size)
    logits_b = torch.zeros(1, size, size)
    points_b = click_disk_points([Click(0, 30.0, 30.0, 0, frame="model")], (size, size), 2)
    options = {"num_points": 64, "importance_ratio": 1.0}
    bce_a, _ = mask_losses([stride4(logits_a)], [target_a], 1.0, generator=torch.Generator().manual_seed(3), **options)
    bce, _ = mask_losses(
        [stride4(logits_a), stride4(logits_b)],
        [target_a, target_b],
        1.0,
        generator=torch.Generator().manual_seed(3),
        extra_points=[torch.zeros(0, 2), points_b],
        **options,
    )
    assert torch.allclose(bce, bce_a + math.log(2), atol=1e-5)


def test_parts_objects_are_apart_and_made_of_touching_parts() -> None:
    from scipy.ndimage import label

    many_parts = 0
    for seed in range(8):
        image, masks = textured_parts_image(np.random.default_rng(seed), size=160)
        assert 2 <= len(masks) <= 4 and image.shape == (160, 160, 3)
        assert np.sum(masks, axis=0).max() == 1, "objects must not overlap"
        for mask in masks:
            assert label(mask)[1] == 1, "an object's parts touch: one connected region"
            many_parts += len(np.unique(image[mask].reshape(-1, 3)[:, :1] // 64)) > 1
    assert many_parts > 0
    assert len(build_dataset(read_source("synthetic:2:1:parts"))) == 2
    with pytest.raises(ValueError, match="kind must be one of"):
        next(textured_shapes(1, kind="stars"))
