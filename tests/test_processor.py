"""DynamiteImageProcessor: the original's resize, normalisation and padding; input rules and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from dynamite_hf import Click, DynamiteConfig, DynamiteImageProcessor, load_image


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
    assert inputs["image_sizes"].tolist() == [[30, 50]] and inputs["original_sizes"].tolist() == [[30, 50]]


def test_resize_is_pil_bilinear_on_uint8() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    processor = DynamiteImageProcessor(short_edge=64, max_size=1000)
    inputs = processor(image)
    expected = np.asarray(Image.fromarray(image).resize((96, 64), Image.BILINEAR)).astype(np.float32)
    restored = inputs["pixel_values"][0, :, :64, :96] * torch.tensor(processor.image_std).view(3, 1, 1)
    restored += torch.tensor(processor.image_mean).view(3, 1, 1)
    np.testing.assert_allclose(restored.permute(1, 2, 0).numpy(), expected, atol=1e-3)


def test_clicks_map_to_the_resized_frame() -> None:
    clicks = DynamiteImageProcessor.clicks_to_model_frame([Click(0, 50.0, 100.0, 0)], (100, 200), (800, 1600))
    assert clicks == [Click(0, 400.0, 800.0, 0, "model")]
    with pytest.raises(ValueError, match="outside the image"):
        DynamiteImageProcessor.clicks_to_model_frame([Click(0, 100.0, 5.0, 0)], (100, 200), (800, 1600))


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


def test_save_and_auto_image_processor_round_trip(tmp_path) -> None:
    processor = DynamiteImageProcessor.from_config(DynamiteConfig.from_preset("mobilenet_v2"))
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DynamiteImageProcessor)
    assert (loaded.short_edge, loaded.max_size) == (448, 747)
