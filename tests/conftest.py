"""Fixtures shared by several test modules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_model

from dynamite_hf import DynamiteImageProcessor


@pytest.fixture
def folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "images" / f"{name}.jpg"
        )
        ids = np.zeros((48, 64), dtype=np.uint8)
        ids[5:20, 5:30], ids[25:45, 30:60] = 1, 2
        Image.fromarray(ids).save(tmp_path / "data" / "masks" / f"{name}.png")
    tiny_model().save_pretrained(tmp_path / "model")
    DynamiteImageProcessor.from_preset("mobilenet_v2").save_pretrained(tmp_path / "model")
    return tmp_path
