"""Fixtures shared by several test modules, and the `slow` marker's switch."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_model

from dynamite_hf import DynamiteImageProcessor

RUN_SLOW = os.environ.get("RUN_SLOW", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `slow` run with RUN_SLOW=1 (`make test-all`, CI) or when selected by `-m slow`, as in
    transformers; `make test` skips them."""
    if RUN_SLOW or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 (make test-all) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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
