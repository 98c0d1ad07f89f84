"""The processor: the original's resize, normalisation and padding; clicks in the transformers SAM way; the one path
from logits to masks (`post_process_masks`); input rules and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model
from transformers import AutoImageProcessor, AutoProcessor

from dynamite_hf import Click, DynamiteImageProcessor, DynamitePredictor, DynamiteProcessor, load_image
from dynamite_hf.models.dynamite.image_processing_dynamite import _sums_per_label


@pytest.mark.parametrize(
    ("size", "expected"),
    [((480, 854), (749, 1333)), ((600, 800), (800, 1067)), ((1000, 500), (1333, 667)), ((800, 800), (800, 800))],
)
def test_resize_follows_detectron2_resize_shortest_edge(size, expected) -> None:
    assert DynamiteImageProcessor().resized_size(*size) == expected


def test_normalises_then_zero_pads_to_multiples_of_32() -> None:
    image = np.full((30, 50, 3), 200, dtype=np.uint8)
    inputs = DynamiteImageProcessor(do_resize=False)(image)
    assert inputs["pixel_values"].shape == (1, 3, 32, 64)
    expected = (200 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(inputs["pixel_values"][0, :, 0, 0], expected)
    assert (
        inputs["pixel_values"][0, :, 30:, :].abs().sum() == 0 and inputs["pixel_values"][0, :, :, 50:].abs().sum() == 0
    )
    assert inputs["reshaped_input_sizes"].tolist() == [[30, 50]] and inputs["original_sizes"].tolist() == [[30, 50]]


def test_resize_is_pil_bilinear_on_uint8() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    processor = DynamiteImageProcessor(size={"shortest_edge": 64, "longest_edge": 1000})
    inputs = processor(image)
    expected = np.asarray(Image.fromarray(image).resize((96, 64), Image.BILINEAR)).astype(np.float32)
    restored = inputs["pixel_values"][0, :, :64, :96] * torch.tensor(processor.image_std).view(3, 1, 1)
    restored += torch.tensor(processor.image_mean).view(3, 1, 1)
    np.testing.assert_allclose(restored.permute(1, 2, 0).numpy(), expected, atol=1e-3)


def test_clicks_map_to_the_resized_frame_as_xy_points() -> None:
    """Points are (x, y) in the original image's pixels, as SAM's processor takes them; the processor scales them to
    the resized image and pads the click lists of a batch with label -10."""
    processor = DynamiteProcessor(DynamiteImageProcessor(size={"shortest_edge": 800, "longest_edge": 1600}))
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)]
    inputs = processor(images, input_points=[[[100.0, 50.0], [3.0, 4.0]], [[10.0, 20.0]]], input_labels=[[1, 0], [1]])
    assert inputs["reshaped_input_sizes"].tolist() == [[800, 1600], [1600, 800]]
    assert inputs["input_points"].dtype == torch.float64
    assert inputs["input_points"][0].tolist() == [[800.0, 400.0], [24.0, 32.0]]
    assert inputs["input_points"][1, 0].tolist() == [80.0, 160.0]
    assert inputs["input_labels"].tolist() == [[1, 0], [1, -10]]
    assert "input_timestamps" not in inputs
    # Clicks alone, for an image processed before (the predictor's way): the sizes the processor returned.
    alone = processor(
        input_points=[[[100.0, 50.0]]],
        input_labels=[[1]],
        input_timestamps=[[7]],
        **{key: inputs[key][:1] for key in ("original_sizes", "reshaped_input_sizes")},
    )
    assert alone["input_points"].tolist() == [[[800.0, 400.0]]] and alone["input_timestamps"].tolist() == [[7]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input_points": [[[5.0, 100.0]]], "input_labels": [[1]]},
            r"input_points\[0\]\[0\] at \(x=5.0, y=100.0\) lies outside",
        ),
        ({"input_points": [[[5.0, 10.0]]], "input_labels": [[1, 0]]}, r"must list the same clicks"),
        (
            {"input_points": [[5.0, 10.0]], "input_labels": [[1]]},
            r"input_points\[0\] must be a list of \[x, y\] points",
        ),
        ({"input_points": [[[5.0, 10.0]]]}, "give both or neither"),
        ({"input_points": [[[5.0, 10.0]]], "input_labels": [[1]], "input_timestamps": [[0, 1]]}, "one entry per click"),
    ],
)
def test_bad_clicks_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        DynamiteProcessor(DynamiteImageProcessor())(np.zeros((100, 200, 3), np.uint8), **kwargs)


def test_model_of_processor_then_post_process_masks_gives_the_predictors_label_map(tmp_path) -> None:
    """The transformers-style call, end to end: `model(**processor(image, input_points=..., input_labels=...))`, then
    `post_process_masks`, gives the label map the predictor gives for the same clicks (both at the original size),
    masks that are that map's instances, and scores in [0, 1]."""
    model = tiny_model()
    processor = DynamiteProcessor(DynamiteImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}))
    image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    clicks = [Click(0, 20.5, 30.0, 0), Click(1, 60.0, 100.0, 1), Click(None, 5.0, 140.0, 2), Click(0, 30.0, 40.0, 3)]
    inputs = processor(
        image,
        input_points=[[[c.col, c.row] for c in clicks]],
        input_labels=[[0 if c.instance is None else c.instance + 1 for c in clicks]],
    )
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_masks(
        outputs.pred_masks, outputs.query_labels, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    predictor = DynamitePredictor(model, processor)
    predictor.set_image(image)
    predictor.set_clicks(clicks)
    assert result["label_map"].shape == (90, 150)
    assert np.array_equal(result["label_map"].numpy(), predictor.label_map)
    assert torch.equal(result["masks"], torch.stack([result["label_map"] == k for k in (1, 2)]))
    assert result["scores"].shape == (2,) and ((result["scores"] >= 0) & (result["scores"] <= 1)).all()


def test_post_process_masks_takes_logits_of_a_call_with_gradients() -> None:
    """`model(**inputs)` outside `torch.no_grad()` (as a first try of the model card's snippet may be) gives logits
    that require grad: post-processing, with the boundary refinement, gives the masks of an inference-mode call."""
    model = tiny_model()
    processor = DynamiteProcessor(DynamiteImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}))
    processor.image_processor.guided_filter_radius = 4
    image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    inputs = processor(image, input_points=[[[30.0, 20.5], [100.0, 60.0]]], input_labels=[[1, 2]])
    sizes = inputs["original_sizes"], inputs["reshaped_input_sizes"]
    outputs = model(**inputs)
    assert outputs.pred_masks.requires_grad
    result = processor.post_process_masks(outputs.pred_masks, outputs.query_labels, *sizes, images=[image])[0]
    with torch.inference_mode():
        expected_outputs = model(**inputs)
    expected = processor.post_process_masks(
        expected_outputs.pred_masks, expected_outputs.query_labels, *sizes, images=[image]
    )[0]
    assert torch.equal(result["label_map"], expected["label_map"]) and torch.equal(result["scores"], expected["scores"])


def test_grayscale_and_rgba_rules(tmp_path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (load_image(gray) == gray[:, :, None]).all() and load_image(gray).shape == (3, 4, 3)
    assert load_image(gray[:, :, None]).shape == (3, 4, 3)
    rgba = np.dstack([np.full((3, 4, 3), 7, np.uint8), np.zeros((3, 4), np.uint8)])
    assert (load_image(rgba) == 7).all()  # alpha dropped, colours kept as stored
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (load_image(tmp_path / "a.png") == 7).all()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        ("no/such/file.png", "no such file"),
        (12, "path, a PIL image or a numpy array"),
    ],
)
def test_bad_images_are_named(image, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(image)


def test_empty_corrupt_and_huge_files_are_refused(tmp_path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "corrupt.png")
    Image.new("L", (5000, 5000)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="more than the limit"):
        load_image(tmp_path / "big.png", max_image_pixels=10_000_000)


def test_save_and_auto_processor_round_trip(tmp_path) -> None:
    processor = DynamiteImageProcessor.from_preset("mobilenet_v2", guided_filter_radius=8)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DynamiteImageProcessor)
    assert loaded.size == {"shortest_edge": 448, "longest_edge": 747} and loaded.guided_filter_radius == 8
    tiny_model().config.save_pretrained(tmp_path)
    both = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(both, DynamiteProcessor) and both.image_processor.size == loaded.size


def test_bad_processor_settings_are_named() -> None:
    with pytest.raises(ValueError, match="size must be"):
        DynamiteImageProcessor(size={"shortest_edge": 800})
    with pytest.raises(ValueError, match="guided_filter_radius must be an int >= 0"):
        DynamiteImageProcessor(guided_filter_radius=-1)
    with pytest.raises(ValueError, match="Unknown preset"):
        DynamiteImageProcessor.from_preset("resnet18")


def test_scores_are_each_instances_mean_probability_over_its_mask() -> None:
    """`scores[k]`: the mean over instance k's mask of the sigmoid of its logits (the max over its queries, at the
    output size); 0 for an instance whose mask came out empty."""
    generator = torch.Generator().manual_seed(0)
    pred_masks = torch.randn(1, 6, 8, 12, generator=generator) * 3
    pred_masks[0, 3] = -100.0  # instance 3's only query loses everywhere: an empty mask
    query_labels = torch.tensor([[1, 2, 1, 3, 0, 0]])
    size = [(32, 48)]  # the padded size: no crop, no resize after the 4x upsampling
    (result,) = DynamiteImageProcessor(guided_filter_radius=0).post_process_masks(pred_masks, query_labels, size, size)
    logits = torch.nn.functional.interpolate(pred_masks, size=size[0], mode="bilinear", align_corners=False)[0]
    instance_logits = torch.stack([logits[query_labels[0] == k].amax(0) for k in (1, 2, 3)])
    masks = result["masks"]
    assert masks[:2].any(dim=(1, 2)).all() and not masks[2].any()
    expected = [
        instance_logits[k].sigmoid()[masks[k]].mean() if masks[k].any() else torch.tensor(0.0) for k in range(3)
    ]
    torch.testing.assert_close(result["scores"], torch.stack(expected))


@pytest.mark.parametrize("length", [0, 5, 8, 1003])
def test_sums_per_label_are_bincounts(length: int) -> None:
    """The scores' per-instance sums (interleaved accumulators, a tail shorter than the lanes summed apart) are
    `torch.bincount`'s, also for runs of one label as a label map has them."""
    generator = torch.Generator().manual_seed(length)
    labels = torch.randint(0, 4, (length,), generator=generator, dtype=torch.int32).sort().values
    weights = torch.rand(length, generator=generator)
    expected = torch.bincount(labels, weights=weights.double(), minlength=5).double()  # (int64 when empty)
    torch.testing.assert_close(_sums_per_label(labels, weights, 5), expected, rtol=1e-12, atol=1e-12)


def test_post_processing_refuses_an_instance_without_a_query() -> None:
    """Instances are 1..N, each with a query; a gap is refused in words (its logits would otherwise be another
    instance's)."""
    pred_masks = torch.randn(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"query_labels\[0\]: instances 1..3 each need a query; instance\(s\) \[2\]"):
        DynamiteImageProcessor().post_process_masks(pred_masks, torch.tensor([[1, 3, 0]]), [(32, 48)], [(32, 48)])


def test_post_processing_can_leave_out_masks_and_scores() -> None:
    """`return_masks=False` / `return_scores=False` (the predictor's per-click call) leave those keys out and give
    the same label map."""
    pred_masks = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * 3
    query_labels = torch.tensor([[1, 2, 0, 0]])
    processor = DynamiteImageProcessor()
    full = processor.post_process_masks(pred_masks, query_labels, [(30, 45)], [(32, 48)])[0]
    assert list(full) == ["masks", "label_map", "scores"]
    for masks, scores in ((False, False), (True, False), (False, True)):
        (result,) = processor.post_process_masks(
            pred_masks, query_labels, [(30, 45)], [(32, 48)], return_masks=masks, return_scores=scores
        )
        assert ("masks" in result, "scores" in result) == (masks, scores)
        assert torch.equal(result["label_map"], full["label_map"])
        if scores:
            assert torch.equal(result["scores"], full["scores"])
