#!/usr/bin/env python
"""Click-to-overlay time of the Gradio app over HTTP: median and 95th percentile, per session.

    python scripts/benchmark_app.py                      # app's default model, a 1200x1600 photo, 30 clicks
    python scripts/benchmark_app.py --sessions 8         # 8 clients clicking at once, each its own session
    python scripts/benchmark_app.py --model PATH --size 900x1200 --clicks 50
    python scripts/benchmark_app.py --client gradio_client   # the same requests through gradio_client

Starts `app.py` on localhost, uploads a generated photo-sized image per session, then times each click from
sending it to having the rendered overlay's bytes, as a browser waits for them. With several sessions, every
client uploads first, then all click at once; each session's median and p95 show whether the queue serves them
alike. The app's peak resident memory is printed at the end.

Clients (`--client`):
- `browser` (default): the requests Gradio's web page makes: join the queue (`POST /gradio_api/queue/join`), read
  the session's event stream (`GET /gradio_api/queue/data`, server-sent events) until the result arrives, then
  fetch the overlay image.
- `chromium`: the app's page in headless Chromium (Debian's `/usr/bin/chromium`, driven by Playwright): each click
  is a real mouse click on the overlay, timed in the page from its `pointerdown` to the `load` of the new overlay
  image (decoded, ready to paint). Background clicks tick the page's checkbox first (not timed).
- `gradio_client`: `gradio_client.Client.predict`, then the overlay file it downloads. It checks for new
  messages every 50 ms (`time.sleep(0.05)` in its loop), which adds 25-50 ms per call that no browser waits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import app_process  # noqa: E402

# Versions of the app before issue 41 took the view settings (alpha, click radius, masks only) with every action
# and one file per upload; the clients below speak both, so that one script times an older version against this
# one on the same clicks.
LEGACY_LOOK = (0.5, 3, False)


def percentile_95(times: list[float]) -> float:
    return sorted(times)[max(0, int(round(0.95 * len(times))) - 1)]


class BrowserProtocolClient:
    """One browser session's requests to a Gradio app, as its web page makes them (no gradio_client)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)
        self.session_hash = uuid.uuid4().hex
        config = self.http.get(f"{self.url}/config").raise_for_status().json()
        self.functions = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
        click = next(d for d in config["dependencies"] if d.get("api_name") == "click")
        self.look = LEGACY_LOOK if len(click["inputs"]) == 7 else ()  # state, row, col, background (+ look)

    def upload(self, path: Path) -> dict[str, Any]:
        """Send a file to the server, as the upload box does; the `FileData` to pass as an input."""
        with open(path, "rb") as handle:
            response = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (path.name, handle)})
        server_path = response.raise_for_status().json()[0]
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, *data: Any) -> list[Any]:
        """Run the event `api_name` with `data` (None for the session's `gr.State` inputs); its outputs."""
        body = {"data": list(data), "fn_index": self.functions[api_name], "session_hash": self.session_hash}
        body |= {"event_data": None, "trigger_id": None}
        event_id = self.http.post(f"{self.url}/gradio_api/queue/join", json=body).raise_for_status().json()
        event_id = event_id["event_id"]
        params = {"session_hash": self.session_hash}
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params=params) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    if not message.get("success", False):
                        raise RuntimeError(f"{api_name} failed: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError(f"the event stream closed before {api_name} completed")

    def upload_image(self, path: Path) -> list[Any]:
        """Upload the image at `path` as the page does; the upload event's outputs."""
        file_data = self.upload(path)
        return self.call("upload", None, *([file_data, *self.look] if self.look else [[file_data]]))

    def click(self, row: float, col: float, background: bool) -> list[Any]:
        """A click at `(row, col)` in the image's pixels; the outputs (session, overlay, status, ...)."""
        return self.call("click", None, row, col, background, *self.look)

    def add_instance(self) -> list[Any]:
        return self.call("add_instance", None, *self.look)

    def fetch(self, file_data: dict[str, Any]) -> bytes:
        """The bytes of an output file, as the page's `<img>` loads them."""
        return self.http.get(file_data["url"]).raise_for_status().content


def run_session(
    url: str, photo: Path, seed: int, clicks: int, start_together: threading.Barrier, client: str = "browser"
) -> list[float]:
    """Upload `photo`, wait for every session to be ready, then click `clicks` times; the click times in s."""
    if client == "chromium":
        return run_chromium_session(url, photo, seed, clicks, start_together)
    height, width = np.asarray(Image.open(photo)).shape[:2]
    rng = np.random.default_rng(seed)
    if client == "browser":
        session = BrowserProtocolClient(url)
        session.upload_image(photo)

        def click(row: float, col: float, background: bool) -> int:
            _, overlay, message, *_ = session.click(row, col, background)
            assert overlay and message.startswith("Click on"), message
            return len(session.fetch(overlay))

        add_instance = session.add_instance
    else:
        from gradio_client import Client, handle_file

        session = Client(url, verbose=False)
        parameters = session.view_api(print_info=False, return_format="dict")["named_endpoints"]["/click"]["parameters"]
        look = LEGACY_LOOK if len(parameters) == 6 else ()
        if look:
            session.predict(handle_file(str(photo)), *look, api_name="/upload")
        else:
            session.predict([handle_file(str(photo))], api_name="/upload")

        def click(row: float, col: float, background: bool) -> int:
            overlay, message, *_ = session.predict(row, col, background, *look, api_name="/click")
            assert overlay and Path(overlay).is_file() and message.startswith("Click on"), message
            return Path(overlay).stat().st_size

        def add_instance() -> None:
            session.predict(*look, api_name="/add_instance")

    start_together.wait()
    times = []
    for index in range(clicks):
        if index and index % 5 == 0:
            add_instance()
        row, col = rng.uniform(0, height), rng.uniform(0, width)
        start = time.perf_counter()
        assert click(row, col, index % 7 == 6) > 0
        times.append(time.perf_counter() - start)
    return times


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# In the page: the time of the last pointerdown, and of every overlay image load (capturing: load does not bubble).
TIMING_SCRIPT = """() => {
    window.benchmarkLoads = [];
    document.addEventListener("pointerdown", () => { window.benchmarkDown = performance.now(); }, true);
    document.addEventListener("load", (event) => {
        if (event.target.closest && event.target.closest("#canvas")) window.benchmarkLoads.push(performance.now());
    }, true);
}"""


def run_chromium_session(
    url: str, photo: Path, seed: int, clicks: int, start_together: threading.Barrier
) -> list[float]:
    """`run_session` in headless Chromium: real clicks on the page, timed by the page itself."""
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(seed)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.evaluate(TIMING_SCRIPT)
        status = page.locator("#status")
        page.locator("#upload input[type=file]").set_input_files(str(photo))
        status.get_by_text("ready").wait_for(timeout=300_000)
        canvas = page.locator("#canvas img")
        page.wait_for_function("() => window.benchmarkLoads.length > 0", timeout=60_000)
        background = page.locator("#background input")
        start_together.wait()
        times = []
        for index in range(clicks):
            if index and index % 5 == 0:
                page.locator("#add-instance").click()
                status.get_by_text("Next click starts").wait_for(timeout=300_000)
            background.set_checked(index % 7 == 6)
            box = canvas.bounding_box()
            x, y = rng.uniform(0, box["width"]), rng.uniform(0, box["height"])
            loads = page.evaluate("() => window.benchmarkLoads.length")
            canvas.click(position={"x": x, "y": y})
            page.wait_for_function(f"() => window.benchmarkLoads.length > {loads}", timeout=300_000)
            down, loaded = page.evaluate("() => [window.benchmarkDown, window.benchmarkLoads.at(-1)]")
            message = status.inner_text()
            assert "Click on" in message, message
            times.append((loaded - down) / 1000)
        browser.close()
    return times


def peak_memory_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the app's default model)")
    parser.add_argument("--size", default="1200x1600", help="photo HEIGHTxWIDTH (default 1200x1600)")
    parser.add_argument("--clicks", type=int, default=30, help="clicks per session (default 30)")
    parser.add_argument("--sessions", type=int, default=1, help="clients clicking at once (default 1)")
    parser.add_argument(
        "--client",
        choices=("browser", "chromium", "gradio_client"),
        default="browser",
        help="how clicks are made: the web page's requests (default), real clicks in Chromium, or gradio_client",
    )
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "photo.jpg"
        base = np.random.default_rng(0).normal(120, 30, (height, width, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(base).save(photo)
        model = Path(args.model) if args.model else None
        with app_process(model, max_sessions=max(8, args.sessions)) as (url, process):
            barrier = threading.Barrier(args.sessions)
            with ThreadPoolExecutor(args.sessions) as pool:
                futures = [
                    pool.submit(run_session, url, photo, 1 + index, args.clicks, barrier, args.client)
                    for index in range(args.sessions)
                ]
                sessions = [future.result() for future in futures]
            memory = peak_memory_mb(process.pid)

    print(f"photo {width}x{height}, {args.sessions} session(s) x {args.clicks} clicks over HTTP ({args.client} client)")
    for index, times in enumerate(sessions):
        if args.sessions > 1:
            print(
                f"  session {index + 1}: median {1000 * statistics.median(times):.0f} ms, "
                f"p95 {1000 * percentile_95(times):.0f} ms"
            )
    every = [t for times in sessions for t in times]
    print(
        f"click-to-overlay: median {1000 * statistics.median(every):.0f} ms, p95 {1000 * percentile_95(every):.0f} ms"
    )
    print(f"app peak memory (VmHWM): {memory:.0f} MB")


if __name__ == "__main__":
    main()
