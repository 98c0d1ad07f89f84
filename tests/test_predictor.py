"""DynamitePredictor: the per-image stage runs once, undo is exact, instances renumber, errors change nothing,
and the public API reproduces the original implementation's masks."""

from __future__ import annotations

import gc
import weakref
from unittest import mock

import numpy as np
import pytest
import torch
from reference import CONFIGS, inputs, near_ties, original_state_dict, outputs, reference_clicks, requires_reference
from tiny import tiny_model

from dynamite_hf import (
    Click,
    DynamiteConfig,
    DynamiteImageProcessor,
    DynamiteModel,
    DynamiteModelOutput,
    DynamitePredictor,
)
from dynamite_hf.conversion import load_original_state_dict


def small_processor() -> DynamiteImageProcessor:
    return DynamiteImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})


@pytest.fixture
def predictor() -> DynamitePredictor:
    return DynamitePredictor(tiny_model(), small_processor())


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def test_per_image_stage_runs_once_for_many_clicks(predictor, image) -> None:
    model, backend = predictor.model, predictor.backend
    with (
        mock.patch.object(backend, "get_image_embeddings", wraps=backend.get_image_embeddings) as spy,
        mock.patch.object(model.backbone, "forward", wraps=model.backbone.forward) as backbone,
    ):
        predictor.set_image(image)
        predictor.add_click(10, 10)
        predictor.add_click(50, 60)
        predictor.add_click(20, 30, instance=0)
        predictor.add_background_click(80, 100)
        predictor.undo()
        predictor.remove_instance(1)
    assert spy.call_count == 1 and backbone.call_count == 1


def test_masks_are_at_original_resolution_and_do_not_overlap(predictor, image) -> None:
    predictor.set_image(image)
    predictor.add_click(10, 10)
    masks = predictor.add_click(50, 60)
    assert masks.shape == (2, 90, 120) and masks.dtype == bool
    assert masks.sum(0).max() <= 1
    assert (predictor.label_map == masks[0] * 1 + masks[1] * 2).all()


def test_label_map_of_predicts_at_any_size_and_leaves_the_session(predictor, image) -> None:
    """The app's path: masks at display size per click, at the image's size on export, none in the history."""
    predictor.set_image(image)
    predictor.add_click(10, 10)
    clicks = [Click(0, 10.0, 10.0, 0), Click(1, 50.0, 60.0, 1), Click(None, 80.0, 100.0, 2)]
    full = predictor.label_map_of(clicks)
    small = predictor.label_map_of(clicks, (45, 60))
    assert predictor.clicks == [Click(0, 10.0, 10.0, 0)]  # the session did not move
    assert small.shape == (45, 60) and small.dtype == full.dtype == np.int32
    predictor.set_clicks(clicks)
    assert np.array_equal(full, predictor.label_map)  # the same masks as set_clicks


def test_preview_differs_from_the_exact_label_map_only_at_a_few_boundary_pixels(predictor, image, monkeypatch) -> None:
    """The preview groups the queries before the last resize. With smooth logits for three instances and the
    background (a random tiny model gives one label everywhere), the maps agree but for boundary pixels."""
    predictor.set_image(image)
    clicks = [Click(0, 10.0, 10.0, 0), Click(1, 50.0, 60.0, 1), Click(None, 80.0, 100.0, 2), Click(2, 30.0, 90.0, 3)]
    num_queries = len(clicks) + predictor.model.config.num_static_bg_queries
    coarse = torch.randn(1, num_queries, 4, 5, generator=torch.Generator().manual_seed(0))
    logits = torch.nn.functional.interpolate(coarse, size=predictor.image_embeddings.mask_features.shape[-2:])
    labels = torch.tensor([[1, 2, 3] + [0] * (num_queries - 3)])  # query order: instances 1-3, then background
    output = DynamiteModelOutput(pred_masks=logits, query_labels=labels)
    monkeypatch.setattr(predictor, "backend", lambda **kwargs: output)
    exact = predictor.label_map_of(clicks, (180, 240))
    preview = predictor.preview_label_map(clicks, (180, 240))
    assert preview.shape == (180, 240) and preview.dtype == np.int32
    assert set(np.unique(exact)) == {0, 1, 2, 3}
    assert (preview != exact).mean() < 0.005


def test_undo_returns_exactly_the_earlier_masks(predictor, image) -> None:
    predictor.set_image(image)
    states = [predictor.label_map.copy()]
    for action in (
        lambda: predictor.add_click(10, 10),
        lambda: predictor.add_click(50, 60),
        lambda: predictor.add_background_click(80, 100),
        lambda: predictor.add_click(30, 40, instance=0),
        lambda: predictor.remove_instance(0),
        lambda: predictor.add_click(70, 20),
    ):
        action()
        states.append(predictor.label_map.copy())
    for expected in reversed(states[:-1]):
        predictor.undo()
        assert np.array_equal(predictor.label_map, expected)
    with pytest.raises(ValueError, match="steps"):
        predictor.undo()


def test_remove_instance_renumbers_and_keeps_click_order(predictor, image) -> None:
    predictor.set_image(image)
    predictor.add_click(10, 10)
    predictor.add_click(50, 60)
    predictor.add_click(70, 20)
    predictor.add_background_click(80, 100)
    predictor.remove_instance(1)
    assert [(c.instance, c.row, c.timestamp) for c in predictor.clicks] == [(0, 10, 0), (1, 70, 1), (None, 80, 2)]
    assert predictor.num_instances == 2 and predictor.masks.shape[0] == 2


def test_background_click_first_waits_for_an_instance(predictor, image) -> None:
    predictor.set_image(image)
    assert predictor.add_background_click(5, 5).shape == (0, 90, 120)
    assert predictor.add_click(40, 40).shape == (1, 90, 120)


def test_errors_leave_the_state_unchanged(predictor, image, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.add_click(1, 1)
    predictor.set_image(image)
    predictor.add_click(10, 10)
    before = (predictor.clicks, predictor.label_map.copy())
    for bad in (
        lambda: predictor.add_click(90, 5),
        lambda: predictor.add_click(5, -1),
        lambda: predictor.add_click(5, 5, instance=3),
        lambda: predictor.remove_instance(1),
        lambda: predictor.set_image(np.zeros((4, 4), np.float32)),
        lambda: predictor.set_image(tmp_path / "missing.png"),
    ):
        with pytest.raises(ValueError):
            bad()
        assert predictor.clicks == before[0] and np.array_equal(predictor.label_map, before[1])


def test_a_new_image_releases_the_previous_features_before_computing_its_own(predictor, image) -> None:
    """Two images' features never coexist (a paper preset's take 334 MB at 800x1216)."""
    predictor.set_image(image)
    predictor.add_click(10, 10)
    previous = weakref.ref(predictor.image_embeddings.mask_features)
    backend, alive_during_next = predictor.backend, []
    original = backend.get_image_embeddings

    def compute(*args, **kwargs):
        gc.collect()
        alive_during_next.append(previous() is not None)
        return original(*args, **kwargs)

    with mock.patch.object(backend, "get_image_embeddings", side_effect=compute):
        predictor.set_image(image[::-1].copy())
    assert alive_during_next == [False]
    assert predictor.clicks == []
    predictor.add_click(10, 10)
    assert predictor.clicks == [Click(0, 10.0, 10.0, 0)] and predictor.label_map.shape == image.shape[:2]


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_every_backend_gives_the_same_session(backend: str, image) -> None:
    """The predictor runs any backend behind the same clicks: the CPU decoder's label maps are the plain
    model's, and `backend` names the one it picked."""
    clicks = [Click(0, 20.5, 30.0, 0), Click(1, 60.0, 100.0, 1), Click(None, 5.0, 110.0, 2), Click(0, 30.0, 40.0, 3)]
    maps = {}
    for name in ("eager", backend):
        predictor = DynamitePredictor(tiny_model(), small_processor(), backend=name)
        predictor.set_image(image)
        maps[name] = predictor.set_clicks(clicks)
    assert np.array_equal(maps["eager"], maps[backend])
    assert type(DynamitePredictor(tiny_model(), backend="cpu").backend).__name__ == "CpuClickDecoder"
    with pytest.raises(ValueError, match="backend must be one of"):
        DynamitePredictor(tiny_model(), backend="gpu")


def test_the_processor_saved_beside_the_model_is_used(tmp_path) -> None:
    """One source of preprocessing settings: the predictor reads `preprocessor_config.json` of the model's folder,
    so an edited one takes effect."""
    tiny_model().save_pretrained(tmp_path)
    DynamiteImageProcessor(size={"shortest_edge": 96, "longest_edge": 200}).save_pretrained(tmp_path)
    predictor = DynamitePredictor.from_pretrained(tmp_path)
    predictor.set_image(np.zeros((48, 64, 3), np.uint8))
    assert predictor.image_embeddings.mask_features.shape[-2:] == (96 // 4, 128 // 4)
    assert (
        DynamitePredictor(DynamiteModel.from_pretrained(tmp_path)).processor.image_processor.size["shortest_edge"] == 96
    )


@requires_reference
@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("image_name", ["img0", "img1"])
def test_reference_masks_through_the_public_api(image_name, backend) -> None:
    """The R50 reference model, driven click by click as a user would, gives the original's masks."""
    model = DynamiteModel(DynamiteConfig.from_preset("resnet50"))
    load_original_state_dict(model, original_state_dict(CONFIGS["resnet50"]))
    # The reference fed images as stored.
    predictor = DynamitePredictor(model, DynamiteImageProcessor(do_resize=False), backend=backend)
    torch.set_num_threads(2)
    predictor.set_image(inputs()[f"{image_name}.image_uint8_hwc"].numpy())
    stored = outputs(CONFIGS["resnet50"])
    first = {c.timestamp: c for c in reference_clicks(image_name, "A")}
    later = {c.timestamp: c for c in reference_clicks(image_name, "B")}
    for scenario, clicks in (("A", first), ("B", later)):
        for timestamp in sorted(clicks):
            if timestamp < len(predictor.clicks):
                continue
            click = clicks[timestamp]
            if click.instance is None:
                predictor.add_background_click(click.row, click.col)
            else:
                predictor.add_click(click.row, click.col, instance=click.instance)
        expected = stored[f"{image_name}.{scenario}.masks"].numpy().astype(bool)
        differing = (predictor.masks != expected).any(0)
        ties = near_ties(CONFIGS["resnet50"], image_name, scenario, expected.shape[-1]).numpy()
        differing[ties[:, 0], ties[:, 1]] = False
        assert not differing.any(), f"{scenario}: {differing.sum()} pixels differ outside near ties"


def test_limits_refuse_more_instances_and_clicks_by_name_and_leave_the_session(image) -> None:
    """Issue 42: more than `max_instances` instances or `max_clicks` clicks on one image are refused where the
    clicks enter (every way they enter), the message names the limit and how to change it, nothing changes."""
    predictor = DynamitePredictor(tiny_model(), small_processor(), max_instances=2, max_clicks=3)
    predictor.set_image(image)
    predictor.add_click(10, 10)
    predictor.add_click(50, 60)
    before = (predictor.clicks, predictor.label_map.copy())
    for refused, limit in (
        (lambda: predictor.add_click(70, 20), "max_instances=2"),
        (lambda: predictor.set_clicks([Click(k, 10.0 * k, 10.0, k) for k in range(3)]), "max_instances=2"),
        (lambda: predictor.label_map_of([Click(k, 10.0 * k, 10.0, k) for k in range(3)]), "max_instances=2"),
        (lambda: predictor.set_clicks([Click(0, 10.0 + k, 10.0, k) for k in range(4)]), "max_clicks=3"),
        (lambda: predictor.preview_label_map([Click(None, 1.0, 1.0 + k, k) for k in range(4)], (9, 12)), "max_clicks"),
    ):
        with pytest.raises(ValueError, match=limit) as error:
            refused()
        assert "DynamitePredictor(..., max_" in str(error.value) and "None for none" in str(error.value)
        assert predictor.clicks == before[0] and np.array_equal(predictor.label_map, before[1])
    predictor.add_background_click(80, 100)  # the third click is allowed...
    with pytest.raises(ValueError, match=r"4 clicks on one image, more than this predictor's max_clicks=3"):
        predictor.add_click(30, 30, instance=0)  # ...the fourth is not
    assert len(predictor.clicks) == 3

    unlimited = DynamitePredictor(tiny_model(), small_processor(), max_instances=None, max_clicks=None)
    unlimited.set_image(image)
    many = [Click(k, float(k % 90), float(k % 120), k) for k in range(40)]  # 40 instances, over the default 30
    assert unlimited.set_clicks(many).shape == (40, 90, 120)
    default = DynamitePredictor(tiny_model(), small_processor())
    default.set_image(image)
    with pytest.raises(ValueError, match="max_instances=30"):
        default.set_clicks(many)
    for bad in ({"max_clicks": 0}, {"max_instances": 2.5}, {"max_history_mb": 0}, {"max_instances": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DynamitePredictor(tiny_model(), small_processor(), **bad)


def test_the_undo_history_is_bounded_in_bytes_and_undo_still_returns_the_earlier_masks(image) -> None:
    """Issue 42: the undo history's label maps stay within `max_history_mb` (a 12-MP photo's are 48 MB each, one
    per click); the steps whose label maps were dropped are predicted again on undo, to the same masks."""
    one_map = image.shape[0] * image.shape[1] * 4
    predictor = DynamitePredictor(tiny_model(), small_processor(), max_history_mb=2.5 * one_map / 2**20)
    predictor.set_image(image)
    states = [predictor.label_map.copy()]
    for row, col in ((10, 10), (50, 60), (30, 100), (70, 20), (85, 5)):
        predictor.add_click(row, col)
        states.append(predictor.label_map.copy())
        kept = [state.label_map is not None for state in predictor._history]
        assert sum(kept) <= 2 and kept[-1]  # within 2.5 maps: the newest ones
    assert predictor.nbytes() - predictor.image.nbytes - predictor.image_embeddings.nbytes() <= 2.5 * one_map
    for expected in reversed(states[:-1]):
        predictor.undo()
        assert np.array_equal(predictor.label_map, expected)
