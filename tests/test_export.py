"""Export round trips: PNG ids, RLE, COCO polygons, and the overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from dynamite_hf import Click
from dynamite_hf.export import (
    empty_instances,
    instance_color,
    render_overlay,
    save_coco,
    save_instance_masks,
    save_label_map,
    save_palette_label_map,
    to_coco,
)


@pytest.fixture
def label_map() -> np.ndarray:
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:20, 5:25] = 1
    labels[25:35, 30:55] = 2
    labels[10:15, 40:45] = 3
    return labels


def test_label_map_png_reads_back_the_ids(label_map, tmp_path) -> None:
    assert np.array_equal(np.asarray(Image.open(save_label_map(label_map, tmp_path / "ids.png"))), label_map)
    palette = Image.open(save_palette_label_map(label_map, tmp_path / "palette.png"))
    assert palette.mode == "P" and np.array_equal(np.asarray(palette), label_map)
    assert tuple(palette.getpalette()[3:6]) == instance_color(0) != (0, 0, 0)  # the overlay's colours


def test_many_instances_use_16_bit(tmp_path) -> None:
    labels = np.arange(300 * 2, dtype=np.int32).reshape(20, 30) % 300
    assert np.array_equal(np.asarray(Image.open(save_label_map(labels, tmp_path / "ids.png"))), labels)


def test_instance_pngs_are_binary(label_map, tmp_path) -> None:
    paths = save_instance_masks(label_map, tmp_path / "masks")
    assert [p.name for p in paths] == ["instance_000.png", "instance_001.png", "instance_002.png"]
    for instance, path in enumerate(paths):
        array = np.asarray(Image.open(path))
        assert set(np.unique(array)) <= {0, 255}
        assert np.array_equal(array == 255, label_map == instance + 1)


def test_coco_rle_decodes_to_the_masks(label_map, tmp_path) -> None:
    coco = json.loads(save_coco(label_map, tmp_path / "coco.json", file_name="x.jpg").read_text())
    assert coco["images"][0] == {"id": 1, "file_name": "x.jpg", "height": 40, "width": 60}
    assert len(coco["annotations"]) == 3
    for annotation in coco["annotations"]:
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), label_map == annotation["instance"] + 1)
        assert annotation["area"] == (label_map == annotation["instance"] + 1).sum()


def test_coco_polygons_are_valid(label_map) -> None:
    coco = to_coco(label_map, segmentation="polygon")
    for annotation in coco["annotations"]:
        polygons = annotation["segmentation"]
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        xs, ys = np.array(polygons[0][0::2]), np.array(polygons[0][1::2])
        assert xs.min() >= 0 and xs.max() < 60 and ys.min() >= 0 and ys.max() < 40
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 60))
        decoded = mask_utils.decode(rle).astype(bool)
        truth = label_map == annotation["instance"] + 1
        # Contours run through the boundary pixels' centres: the polygon never leaves the mask and, for objects
        # of 100+ pixels, covers it up to the half-pixel rim.
        assert not (decoded & ~truth).any()
        if truth.sum() >= 100:
            assert (decoded & truth).sum() / truth.sum() > 0.85


def test_overlay_colours_instances_and_marks_clicks(label_map) -> None:
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    clicks = [Click(0, 12.0, 15.0, 0), Click(None, 2.0, 2.0, 1)]
    overlay = render_overlay(image, label_map, clicks, alpha=0.5, click_radius=2)
    assert overlay.shape == (40, 60, 3) and overlay.dtype == np.uint8
    assert tuple(overlay[38, 2]) == (100, 100, 100)  # background untouched
    assert tuple(overlay[30, 50]) == tuple(round(0.5 * 100 + 0.5 * c) for c in instance_color(1))
    assert tuple(overlay[12, 15]) == instance_color(0)  # positive click: its instance colour
    assert tuple(overlay[2, 2]) == (255, 0, 0)  # background click: red
    assert np.array_equal(render_overlay(image, label_map, clicks, show_clicks=False)[2, 2], [100, 100, 100])
    with pytest.raises(ValueError, match="differ in size"):
        render_overlay(image[:10], label_map)


def test_clicked_instances_with_empty_masks_are_still_exported(label_map, tmp_path) -> None:
    """One rule for every export: all `num_instances` clicked instances, an empty mask included."""
    assert empty_instances(label_map, 5) == [3, 4]
    coco = to_coco(label_map, num_instances=5)
    assert [a["instance"] for a in coco["annotations"]] == [0, 1, 2, 3, 4]
    empty = coco["annotations"][3]
    assert empty["area"] == 0 and empty["bbox"] == [0.0, 0.0, 0.0, 0.0]
    rle = dict(empty["segmentation"], counts=empty["segmentation"]["counts"].encode())
    assert not mask_utils.decode(rle).any()
    assert to_coco(label_map, num_instances=5, segmentation="polygon")["annotations"][4]["segmentation"] == []
    paths = save_instance_masks(label_map, tmp_path, num_instances=5)
    assert len(paths) == 5 and not np.asarray(Image.open(paths[4])).any()
    with pytest.raises(ValueError, match=r"num_instances must be at least 3 \(the largest id in label_map\), got 2"):
        to_coco(label_map, num_instances=2)


def test_instance_colours_are_bright_and_far_apart() -> None:
    """Saturated, light colours, pairwise far apart: they read on dark, red or brown photos alike."""
    colors = np.array([instance_color(k) for k in range(10)], dtype=float)
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1)[np.triu_indices(10, 1)]
    assert distances.min() > 90, distances.min()
    assert (colors.max(axis=1) >= 200).all()


def test_overlay_outlines_every_mask_and_the_selected_one_thicker(label_map) -> None:
    photo = np.zeros((40, 60, 3), dtype=np.uint8)
    photo[...] = (150, 50, 40)  # a red-brown object, where the old dark red vanished
    overlay = render_overlay(photo, label_map, alpha=0.5, selected=1).astype(int)
    white, black = [255, 255, 255], [0, 0, 0]
    # Instance 0 (rows 5-19, cols 5-24): a white rim on its edge pixels, a black line just outside.
    assert overlay[5, 10].tolist() == white and overlay[4, 10].tolist() == black
    assert overlay[19, 10].tolist() == white and overlay[20, 10].tolist() == black
    assert overlay[6, 10].tolist() != white  # 1 px rim for an unselected instance
    # Instance 1 (rows 25-34, cols 30-54) is selected: a 2 px rim.
    assert overlay[25, 40].tolist() == white and overlay[26, 40].tolist() == white
    assert overlay[27, 40].tolist() != white
    # The fill stands out from the photo.
    assert np.abs(overlay[12, 15] - photo[12, 15]).sum() > 100


def test_click_markers_stand_out_on_every_mask_colour() -> None:
    """A click marker keeps a black ring and a white ring whatever it is drawn on (each instance colour, its own
    included, a black and a white photo), so one of them contrasts with its surroundings."""
    from dynamite_hf.export import INSTANCE_COLORS

    for surface in [*INSTANCE_COLORS, (0, 0, 0), (255, 255, 255)]:
        image = np.full((41, 41, 3), surface, dtype=np.uint8)
        label_map = np.zeros((41, 41), dtype=np.int64)
        overlay = render_overlay(image, label_map, [Click(0, 20.0, 20.0, 0)], click_radius=5)
        assert tuple(overlay[20, 20]) == instance_color(0)
        assert tuple(overlay[20, 26]) == (255, 255, 255) and tuple(overlay[20, 27]) == (0, 0, 0)
        assert tuple(overlay[20, 30]) == tuple(surface)  # nothing drawn beyond the rings
