"""The app in a real headless browser: Debian's Chromium driven by Playwright (no browser download), one app server
and one browser for the module, a fresh page (a fresh session) per test."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import running_app
from PIL import Image

from dynamite_hf.export import instance_color

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
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 1800}  # the whole page in view: the fast test clicks where widgets are
ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "dynamite_hf" / "app" / "examples" / "coffee.jpg"  # 600x400: a cup, its saucer, a spoon
STATUS = "#status [data-testid=markdown]"  # the message itself, without the progress tracker


@pytest.fixture(scope="module")
def server():
    # The bundled trained model: its masks follow every click, so a lost or misplaced action shows in them.
    with running_app(ROOT / "models" / "dynamite-mobilenet-v2") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(server, browser):
    page = open_page(browser, server)
    yield page
    page.close()


def noise_photo(folder: Path, name: str, size=(120, 160), seed=0) -> Path:
    path = folder / name
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def open_page(browser, url: str):
    """A new page (a new session) once the app's page script has loaded (Gradio adds it to the <head> itself)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.locator("#upload").wait_for(timeout=TIMEOUT_MS)
    # (A page without the script, e61fff6's, goes on at once: the fast test runs there too, and fails.)
    page.wait_for_function("() => window.dynamite || !document.querySelector('#apply')", timeout=TIMEOUT_MS)
    return page


def upload(page, *paths: Path) -> None:
    """Upload `paths` and wait until the first is shown (its overlay loaded: clicks land where it is drawn)."""
    page.locator("#upload input[type=file]").set_input_files([str(p) for p in paths])
    page.locator(STATUS).get_by_text("ready").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => { const image = document.querySelector('#canvas img'); return image?.complete && image.naturalWidth; }",
        timeout=TIMEOUT_MS,
    )


def click_canvas(page, x_share: float, y_share: float) -> None:
    """A real mouse click at a share of the overlay's width and height."""
    canvas = page.locator("#canvas img")
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] * x_share, "y": box["height"] * y_share})


def status_after(page, action) -> str:
    """Run `action`, then wait for the status line to change; the new status."""
    status = page.locator(STATUS)
    before = status.inner_text()
    action()
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector).innerText !== before",
        arg=[STATUS, before],
        timeout=TIMEOUT_MS,
    )
    return status.inner_text()


def exported_coco(page) -> dict:
    page.locator("#export").click()
    link = page.locator("#downloads a[download='coco.json']")
    link.first.wait_for(timeout=TIMEOUT_MS)
    return json.loads(page.request.get(link.first.get_attribute("href")).body())


def overlay(page) -> np.ndarray:
    """The overlay as the page shows it: the image its `<img>` loaded, decoded."""
    source = page.locator("#canvas img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB")).astype(int)


# One session's actions on the coffee photo: clicks at shares of the overlay, "Add instance" and the background
# checkbox, all through the page's own widgets.
ACTIONS = [
    ("click", 0.45, 0.30),  # the cup
    ("click", 0.50, 0.45),
    ("add",),
    ("click", 0.25, 0.72),  # the saucer
    ("add",),
    ("click", 0.66, 0.66),  # the spoon
    ("background",),
    ("click", 0.05, 0.10),  # the table
    ("background",),
    ("click", 0.70, 0.62),  # the spoon again
]


def perform(page, action) -> None:
    """One action by a real mouse click where the page shows the widget, with no wait for the page to be ready
    (Playwright's locator clicks wait until nothing covers the widget: not as fast as a person can click)."""
    if action[0] == "click":
        box = page.locator("#canvas img").bounding_box()
        page.mouse.click(box["x"] + box["width"] * action[1], box["y"] + box["height"] * action[2])
    else:
        box = page.locator("#add-instance" if action[0] == "add" else "#background input").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_actions_made_as_fast_as_the_page_allows_apply_like_slow_ones(browser, server, tmp_path) -> None:
    """Ten clicks and presses made without waiting give the same instances and masks as the same ones made one at
    a time, each after the previous answer; and so does a second fast run (not a lucky one)."""
    photo = tmp_path / "photo.jpg"
    shutil.copyfile(PHOTO, photo)
    results = []
    for speed in ("slow", "fast", "fast"):
        page = open_page(browser, server)
        upload(page, photo)
        for action in ACTIONS:
            if speed == "slow" and action[0] != "background":
                status_after(page, lambda page=page, action=action: perform(page, action))
            else:
                perform(page, action)
        # The last action is a click refining instance 3: once its answer is shown, everything before it was applied.
        with contextlib.suppress(playwright.TimeoutError):  # compared below, where the difference is shown
            page.locator(STATUS).get_by_text(re.compile(r"Click on instance 3\b")).wait_for(timeout=30_000)
        coco = exported_coco(page)
        results.append([(a["category_id"], a["bbox"], a["segmentation"]["counts"]) for a in coco["annotations"]])
        page.close()
    slow, *fast = results
    assert len(slow) == 3
    for run in fast:
        assert len(run) == 3, f"{len(run)} instance(s) instead of 3: actions were lost or merged when working fast"
        assert run == slow, "the fast actions gave other masks than the same actions made slowly"


def test_shortcuts_zoom_pan_markers_and_swatches(page, tmp_path) -> None:
    """The shortcuts are listed on the page and work; a click while zoomed lands on the overlay pixel under the
    pointer; a drag pans without clicking; click markers carry a black and a white ring; each instance in the
    list has a swatch of its colour."""
    shortcuts = page.locator("#shortcuts").inner_text()
    for key in ("N", "B", "Z", "Delete", "→ / ←", "0"):
        assert key in shortcuts, shortcuts
    upload(page, noise_photo(tmp_path, "first.png", seed=1), noise_photo(tmp_path, "second.png", seed=2))
    assert "Image 1/2 'first.png'" in page.locator(STATUS).inner_text()
    canvas = page.locator("#canvas img")
    natural = page.evaluate(
        "() => { const i = document.querySelector('#canvas img'); return [i.naturalWidth, i.naturalHeight]; }"
    )

    assert "Click on instance 1" in status_after(page, lambda: click_canvas(page, 0.25, 0.25))
    assert "Next click starts instance 2" in status_after(page, lambda: page.keyboard.press("n"))
    assert "Click on instance 2" in status_after(page, lambda: click_canvas(page, 0.75, 0.75))
    page.keyboard.press("b")
    assert page.locator("#background input").is_checked()
    assert "Click on background" in status_after(page, lambda: click_canvas(page, 0.9, 0.1))
    page.keyboard.press("b")
    assert not page.locator("#background input").is_checked()
    assert status_after(page, lambda: page.keyboard.press("z")) == "Undone."
    assert "Removed instance 2" in status_after(page, lambda: page.keyboard.press("Delete"))
    assert status_after(page, lambda: page.keyboard.press("Control+z")) == "Undone."
    assert "Image 2/2 'second.png'" in status_after(page, lambda: page.keyboard.press("ArrowRight"))
    assert "Image 1/2 'first.png'" in status_after(page, lambda: page.keyboard.press("ArrowLeft"))
    assert "2 instance(s)" in page.locator(STATUS).inner_text()  # its clicks came back with it

    # Markers: instance 2's click at 3/4 of the overlay, radius 5: its colour, then going outwards in each of the
    # four directions a white ring, then a black one (a pixel or so either way: the click is where the mouse was).
    pixels = overlay(page)
    row, col = round(0.75 * natural[1]), round(0.75 * natural[0])
    assert np.abs(pixels[row, col] - instance_color(1)).max() < 40
    for d_row, d_col in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ray = [pixels[row + d_row * d, col + d_col * d] for d in range(3, 11)]
        white = next(d for d, p in enumerate(ray) if p.min() > 180)
        assert any(p.max() < 75 for p in ray[white + 1 :]), ray

    # Zoom in with the wheel around a point, then click an overlay pixel through the zoom.
    fitted = canvas.bounding_box()
    page.mouse.move(fitted["x"] + fitted["width"] * 0.5, fitted["y"] + fitted["height"] * 0.5)
    page.mouse.wheel(0, -600)
    page.wait_for_function("() => window.dynamite.view.zoom > 2", timeout=TIMEOUT_MS)
    zoomed = canvas.bounding_box()
    assert zoomed["width"] > 2 * fitted["width"]
    target = (0.47 * natural[0], 0.52 * natural[1])  # overlay pixels, near the centre (still in view)
    x = zoomed["x"] + target[0] * zoomed["width"] / natural[0]
    y = zoomed["y"] + target[1] * zoomed["height"] / natural[1]
    message = status_after(page, lambda: page.mouse.click(x, y))
    found = re.search(r"Click on instance 1 at \(x=(\d+), y=(\d+)\)", message)
    assert found, message
    scale = 160 / natural[0]  # image pixels per overlay pixel (the photos are 160 wide)
    assert abs(int(found.group(1)) - target[0] * scale) <= 1 and abs(int(found.group(2)) - target[1] * scale) <= 1

    # A drag pans and clicks nothing; 0 fits the image again.
    before = page.locator(STATUS).inner_text()
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 40, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "left => document.querySelector('#canvas img').getBoundingClientRect().left > left + 30",
        arg=zoomed["x"],
        timeout=TIMEOUT_MS,
    )
    panned = canvas.bounding_box()
    assert abs(panned["x"] - zoomed["x"] - 60) < 2 and abs(panned["y"] - zoomed["y"] - 40) < 2
    page.wait_for_timeout(500)
    assert page.locator(STATUS).inner_text() == before
    page.keyboard.press("0")
    assert canvas.bounding_box() == pytest.approx(fitted, abs=1)

    swatches = page.evaluate(
        "() => [...document.querySelectorAll('#instance label span')].map(s => getComputedStyle(s, '::before').backgroundColor)"
    )
    assert len(swatches) == 3  # instances 1, 2 and the next one
    assert swatches == [f"rgb({', '.join(str(v) for v in instance_color(k))})" for k in range(3)]


def test_controls_clamp_or_refuse_in_words_and_the_examples_are_photos(page) -> None:
    """Clearing Alpha or typing a radius out of range is answered in the status line, the box shows the value in
    force, and no "Error" badge appears; an example is a real photo."""
    status = page.locator(STATUS)
    status_after(page, lambda: page.get_by_text("Coffee cup (CC0)").click())
    assert "'coffee.jpg' 600x400 ready" in status.inner_text()
    alpha = page.get_by_label("number input for Alpha")
    radius = page.get_by_label("number input for Click radius")
    for box, typed, expected, shown in (
        (alpha, "", "Alpha (mask opacity) needs a number from 0 to 1; it stays 0.5.", "0.5"),
        (alpha, "7", "Alpha (mask opacity) goes from 0 to 1: 7 was set to 1.", "1"),
        (radius, "-3", "Click radius goes from 0 to 12: -3 was set to 0.", "0"),
        (radius, "4", "Click radius: 4.", "4"),
    ):
        message = status_after(page, lambda box=box, typed=typed: (box.fill(typed), box.press("Enter")))
        assert message.endswith(expected), message
        assert box.input_value() == shown
    page.wait_for_timeout(500)
    assert page.get_by_text("Error", exact=True).count() == 0
    pixels = overlay(page)
    assert pixels.shape == (400, 600, 3) and pixels.std() > 30  # a photo, not a flat synthetic scene


def test_a_text_file_gets_a_message_and_the_export_lists_the_dataset(page, tmp_path) -> None:
    """A text file is named in a message; a click changes the overlay where it was made; exporting lists the
    dataset's files and Reset clears the list."""
    (tmp_path / "notes.txt").write_text("not an image")
    page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
    page.locator(STATUS).get_by_text("'notes.txt' is not a readable image").wait_for(timeout=TIMEOUT_MS)
    shutil.copyfile(PHOTO, tmp_path / "photo.jpg")
    upload(page, tmp_path / "photo.jpg")
    before = overlay(page)
    status_after(page, lambda: click_canvas(page, 0.5, 0.5))
    after = overlay(page)
    changed = np.abs(after - before).sum(-1) > 30
    height, width = changed.shape
    assert changed[height // 2 - 10 : height // 2 + 10, width // 2 - 10 : width // 2 + 10].mean() > 0.5
    coco = exported_coco(page)
    assert [image["file_name"] for image in coco["images"]] == ["photo.jpg"]
    assert page.locator("#downloads").get_by_text("dataset").count() == 1
    assert "cleared" in status_after(page, lambda: page.locator("#reset").click())
    page.locator("#downloads").get_by_text("coco").wait_for(state="detached", timeout=TIMEOUT_MS)
