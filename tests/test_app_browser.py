"""The app in a real headless browser: Debian's Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import running_app
from PIL import Image
from test_modeling import tiny_model

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_clicking_in_the_browser_changes_the_overlay(tmp_path) -> None:
    tiny_model(num_static_bg_queries=0).save_pretrained(tmp_path / "model")
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[:, :, 1] = 90
    Image.fromarray(image).save(tmp_path / "photo.png")
    with running_app(tmp_path / "model") as url, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "photo.png"))
        page.locator("#status").get_by_text("ready").wait_for(timeout=60_000)
        canvas = page.locator("#canvas img")
        canvas.wait_for(timeout=30_000)
        before = canvas.screenshot(path=str(tmp_path / "before.png"))
        box = canvas.bounding_box()
        canvas.click(position={"x": box["width"] * 0.4, "y": box["height"] * 0.5})
        page.locator("#status").get_by_text("Click on instance 1").wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # let the new overlay image load
        after = canvas.screenshot(path=str(tmp_path / "after.png"))
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert before != after, "the overlay did not change after the click"
    changed = np.abs(
        np.asarray(Image.open(tmp_path / "before.png").convert("RGB"), dtype=int)
        - np.asarray(Image.open(tmp_path / "after.png").convert("RGB"), dtype=int)
    ).sum(-1)
    assert (changed > 30).mean() > 0.001  # the click marker and/or mask are drawn
    print(f"screenshots in {tmp_path}")
