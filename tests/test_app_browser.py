"""The app in a real headless browser: Debian's Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import running_app
from PIL import Image
from tiny import tiny_model

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


def test_clicking_the_example_in_the_browser(tmp_path) -> None:
    """A text file gets a message; the example is clicked where its red ellipse is, the overlay changes there and
    the status reports the time; exporting lists the files and Reset clears them."""
    tiny_model(num_static_bg_queries=0).save_pretrained(tmp_path / "model")  # every pixel goes to the instance
    (tmp_path / "notes.txt").write_text("not an image")
    with running_app(tmp_path / "model") as url, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        status = page.locator("#status")
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
        status.get_by_text("'notes.txt' is not a readable image").wait_for(timeout=60_000)

        page.get_by_text("example_0.png").click()  # 540x360, a red ellipse in the box (60, 80)-(220, 260)
        status.get_by_text("ready").wait_for(timeout=60_000)
        canvas = page.locator("#canvas img")
        canvas.wait_for(timeout=30_000)
        before = canvas.screenshot(path=str(tmp_path / "before.png"))
        box = canvas.bounding_box()
        x, y = box["width"] * 140 / 540, box["height"] * 170 / 360  # the ellipse's centre
        canvas.click(position={"x": x, "y": y})
        status.get_by_text(re.compile(r"Click on instance 1: \d+ ms")).wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # let the new overlay image load
        after = canvas.screenshot(path=str(tmp_path / "after.png"))

        page.locator("#export").click()
        downloads = page.locator("#downloads")
        downloads.get_by_text("coco").wait_for(timeout=30_000)
        page.locator("#reset").click()
        status.get_by_text("All clicks cleared").wait_for(timeout=30_000)
        downloads.get_by_text("coco").wait_for(state="detached", timeout=30_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert before != after, "the overlay did not change after the click"
    changed = np.abs(
        np.asarray(Image.open(tmp_path / "before.png").convert("RGB"), dtype=int)
        - np.asarray(Image.open(tmp_path / "after.png").convert("RGB"), dtype=int)
    ).sum(-1)
    scale = changed.shape[1] / box["width"]  # screenshot pixels per CSS pixel
    row, col = round(y * scale), round(x * scale)
    assert (changed[row - 10 : row + 10, col - 10 : col + 10] > 30).mean() > 0.5, "no change where it clicked"
    print(f"screenshots in {tmp_path}")
