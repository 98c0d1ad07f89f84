#!/usr/bin/env python
"""Click-to-overlay time of the Gradio app over HTTP: median and 95th percentile, per session; and, with `--abuse`,
whether normal sessions keep their latency beside an abusive client, and the app's memory meanwhile.

    python scripts/benchmark_app.py                      # app's default model, a 1200x1600 photo, 30 clicks
    python scripts/benchmark_app.py --sessions 8         # 8 clients clicking at once, each its own session
    python scripts/benchmark_app.py --model PATH --size 900x1200 --clicks 50
    python scripts/benchmark_app.py --client gradio_client   # the same requests through gradio_client
    python scripts/benchmark_app.py --abuse --minutes 10     # 4 normal sessions, with and without an abuser

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

`--abuse` (the `browser` client): `--sessions` normal sessions (default 4) click without pause for `--minutes`, in
`--rounds` rounds of two halves, the first without the abuser, the second beside it; each click counts for the half
it started in (the clicks of the few seconds it takes the abuser to stop are left out). The abuser is three tight
loops, each its own client: clicks at the app's limits (on the largest image the app keeps, it adds instances and
clicks until the app refuses more, then undoes and clicks again, and tries one click over the limit, in a loop);
uploads of files just under the app's upload size (a new session whenever the app refuses more images in one); and
the stateless `/segment` call with as many clicks and instances as the app allows. Every session keeps its page's
heartbeat open and closes it at the end, as a tab being closed does. Printed: the normal sessions' median and p95 with
and without the abuser, and their ratio; what the abuser got done; the app's resident memory when idle before the
sessions (after a first click, and after a first visitor's 25 clicks), its peak over the run (sampled every 0.5 s,
and the kernel's high-water mark), `--settle-s` seconds after the sessions ended, and as long again after the app
ended them (a closed page's session is kept for `--closed-session-seconds`, default five minutes, in case it comes
back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
        self.max_file_size = config.get("max_file_size")  # bytes, or None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_socket = None

    def open_heartbeat(self) -> None:
        """Keep the session's heartbeat stream open, as the page does (the server ends the session when it closes).
        A plain socket, so that `close` can end it at once (shutting it down wakes the reading thread)."""
        import socket
        from urllib.parse import urlsplit

        address = urlsplit(self.url)
        sock = socket.create_connection((address.hostname, address.port or 80), timeout=30)
        path = f"{address.path.rstrip('/')}/gradio_api/heartbeat/{self.session_hash}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
        sock.settimeout(None)

        def listen() -> None:
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass

        self._heartbeat_socket = sock
        self._heartbeat = threading.Thread(target=listen, daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        """End the session as a closed tab does: its heartbeat stream closes."""
        import socket

        if self._heartbeat_socket is not None:
            with contextlib.suppress(OSError):  # already closed by the server
                self._heartbeat_socket.shutdown(socket.SHUT_RDWR)
            self._heartbeat_socket.close()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
        self.http.close()

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

    def segment(self, path: Path, clicks: list[dict[str, Any]]) -> list[Any]:
        """The stateless call: `path` and its clicks in, the label map file and COCO JSON out."""
        return self.call("segment", self.upload(path), clicks)


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


def resident_mb(pid: int) -> float:
    """The process's resident set now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def noise_photo(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A photo-sized image (smooth blobs plus noise, so masks have something to follow), saved at `path`."""
    rng = np.random.default_rng(seed)
    small = rng.normal(120, 50, (max(2, height // 64), max(2, width // 64), 3)).clip(0, 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def large_upload(path: Path, max_bytes: int | None) -> Path:
    """A PNG of noise just under `max_bytes` (a noise PNG takes about 3 bytes per pixel), or 20 MB without a limit."""
    target = 0.9 * (max_bytes or 20 * 2**20)
    side = int((target / 3.05) ** 0.5)
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class Phases:
    """Which half of a round the run is in: `"alone"`, `"abused"`, or None while the abuser stops."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.stop = threading.Event()


@dataclass
class NormalSession:
    """A person annotating: clicks (a new instance every 5, a background click every 7th, a reset after 25: within
    the default limits), each timed from sending it to having the overlay's bytes, and the phase it started in."""

    url: str
    photo: Path
    seed: int
    think_s: float = 0.0
    max_clicks: int | None = None  # then the page closes (default: when `phases.stop` is set)
    times: list[tuple[str, float]] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, phases: Phases, ready: threading.Barrier) -> None:
        try:
            self._run(phases, ready)
        except BaseException as error:  # raised again by the main thread
            self.error = error
            ready.abort()
            raise

    def _run(self, phases: Phases, ready: threading.Barrier) -> None:
        height, width = np.asarray(Image.open(self.photo)).shape[:2]
        rng = np.random.default_rng(self.seed)
        client = BrowserProtocolClient(self.url)
        client.open_heartbeat()
        client.upload_image(self.photo)
        ready.wait()
        index = 0
        while not phases.stop.is_set() and (self.max_clicks is None or index < self.max_clicks):
            if index and index % 25 == 0:
                client.call("reset", None)
            elif index and index % 5 == 0:
                client.add_instance()
            phase = phases.current
            start = time.perf_counter()
            _, overlay, message, *_ = client.click(rng.uniform(0, height), rng.uniform(0, width), index % 7 == 6)
            assert overlay and message.startswith("Click on"), message
            client.fetch(overlay)
            if phase is not None and phase == phases.current:
                self.times.append((phase, time.perf_counter() - start))
            index += 1
            if self.think_s:
                time.sleep(self.think_s)
        client.close()


class Abuser:
    """Three tight loops, each its own client (see the module docstring). `prepare` brings the click session and the
    stateless call to the app's limits (hundreds of model runs: done before the timed rounds); the loops then run
    while `active` is set."""

    def __init__(self, url: str, image: Path, upload: Path, loops: list[str]) -> None:
        self.url, self.image, self.upload_file, self.loops = url, image, upload, loops
        self.height, self.width = np.asarray(Image.open(image)).shape[:2]
        self.rng = np.random.default_rng(3)
        self.active, self.stopping = threading.Event(), threading.Event()
        self.done = {name: 0 for name in loops}  # requests answered
        self.refused = {name: 0 for name in loops}  # refusals among them (the limits at work)
        self.seconds: dict[str, list[float]] = {name: [] for name in loops}
        self.idle = {name: threading.Event() for name in loops}
        self.limits: dict[str, int] = {}
        self.clicker: BrowserProtocolClient | None = None
        self.clients: list[BrowserProtocolClient] = []  # open, to close at the end
        self.segment_clicks: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def point(self) -> tuple[float, float]:
        return float(self.rng.uniform(0, self.height)), float(self.rng.uniform(0, self.width))

    def prepare(self) -> float:
        """Reach the limits; the seconds it took."""
        start = time.perf_counter()
        if "segment" in self.loops or "clicks" in self.loops:
            self.limits = self.learn_limits()
        if "clicks" in self.loops:
            self.clicker = client = BrowserProtocolClient(self.url)
            self.clients.append(client)
            client.open_heartbeat()
            client.upload_image(self.image)
            for instance in range(self.limits["instances"]):
                if instance:
                    client.add_instance()
                client.click(*self.point(), False)
            for _ in range(self.limits["clicks"] - self.limits["instances"]):
                message = client.click(*self.point(), False)[2]
                assert message.startswith("Click on"), message
        if "segment" in self.loops:
            instances, clicks = self.limits["instances"], self.limits["clicks"]
            self.segment_clicks = [
                {"row": row, "col": col, "instance": index % instances}
                for index, (row, col) in enumerate(self.point() for _ in range(clicks))
            ]
        self.threads = [threading.Thread(target=self._loop, args=(name,), daemon=True) for name in self.loops]
        for thread in self.threads:
            thread.start()
        return time.perf_counter() - start

    def learn_limits(self) -> dict[str, int]:
        """The app's instances and clicks per image, read from its refusals of the stateless call (cheap: refused
        before the image is decoded). Limits of 2048 or more are taken as 2048."""
        client = BrowserProtocolClient(self.url)
        limits, count = {}, 2048
        for what in ("instances", "clicks"):
            instances = count if what == "instances" else limits["instances"]
            clicks = [{"row": 1.0, "col": 1.0, "instance": k % instances} for k in range(count)]
            try:
                client.segment(self.image, clicks)
                limits[what] = count
            except RuntimeError as error:
                found = re.search(rf"{count} {what}, more than the (\d+)", str(error))
                if found is None:
                    raise
                limits[what] = int(found.group(1))
        client.close()
        return limits

    def pause(self) -> None:
        """Stop sending, and wait until every loop's last request has been answered."""
        self.active.clear()
        for idle in self.idle.values():
            idle.wait()

    def finish(self) -> None:
        self.stopping.set()
        self.active.set()
        for thread in self.threads:
            thread.join(600)
        for client in self.clients:
            client.close()

    def _requests(self, name: str):
        """The loop `name` as a generator of requests, each a callable that returns the status message."""
        if name == "clicks":
            client = self.clicker
            while True:  # at the limits: one click over them (refused), then undo one and click again
                row, col = self.point()
                yield lambda row=row, col=col: client.click(row, col, False)[2]
                yield lambda: client.call("undo", None)[2]
                yield lambda row=row, col=col: client.click(row, col, True)[2]
        elif name == "uploads":
            while True:  # a new session whenever the app refuses more images in one
                client = BrowserProtocolClient(self.url)
                self.clients.append(client)
                client.open_heartbeat()
                messages = [""]

                def upload(client=client, messages=messages) -> str:
                    messages[0] = client.upload_image(self.upload_file)[2]
                    return messages[0]

                while "was not added" not in messages[0]:
                    yield upload
                client.close()
                self.clients.remove(client)
        elif name == "segment":
            client = BrowserProtocolClient(self.url)
            self.clients.append(client)
            while True:
                yield lambda: client.segment(self.image, self.segment_clicks) and "segmented"

    def _loop(self, name: str) -> None:
        requests = self._requests(name)
        while True:
            if not self.active.is_set():
                self.idle[name].set()
                self.active.wait()
            if self.stopping.is_set():
                return
            self.idle[name].clear()
            start = time.perf_counter()
            message = next(requests)()
            self.seconds[name].append(time.perf_counter() - start)
            self.done[name] += 1
            self.refused[name] += isinstance(message, str) and message.startswith("⚠️")


class MemorySampler:
    """The app's resident memory every `period` seconds while it runs: its peak."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid, self.period, self.peak, self.stop = pid, period, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, resident_mb(self.pid))
            self.stop.wait(self.period)

    def finish(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak


def settled_mb(pid: int, seconds: float) -> float:
    """The app's resident memory after `seconds` of idleness (its lowest reading over the last tenth of them)."""
    time.sleep(0.9 * seconds)
    readings = [resident_mb(pid)]
    for _ in range(5):
        time.sleep(0.02 * seconds)
        readings.append(resident_mb(pid))
    return min(readings)


def run_abuse(args: argparse.Namespace, height: int, width: int) -> None:
    """`--abuse`: see the module docstring."""
    from dynamite_hf.app.limits import AppLimits

    app_args = shlex.split(args.app_args)
    app_settings = argparse.ArgumentParser(add_help=False)
    AppLimits.add_arguments(app_settings)
    release_grace_s = app_settings.parse_known_args(app_args)[0].closed_session_seconds  # as app.py reads it
    abuse_height, abuse_width = (int(v) for v in args.abuse_size.lower().split("x"))
    loops = [name.strip() for name in args.abuser.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as folder:
        photo = noise_photo(Path(folder) / "photo.jpg", height, width)
        large = noise_photo(Path(folder) / "large.jpg", abuse_height, abuse_width, seed=2)
        model = Path(args.model) if args.model else None
        with app_process(model, max_sessions=max(8, args.sessions + 2), extra_args=app_args) as (url, process):
            warm = BrowserProtocolClient(url)  # the model's first runs (allocator, caches) before the idle reading
            warm.open_heartbeat()
            warm.upload_image(photo)
            warm.click(height / 2, width / 2, False)
            warm.close()
            idle_first = settled_mb(process.pid, args.settle_s)
            # A first visitor's clicks fill the kernel caches that every later visitor's clicks use (oneDNN's
            # compiled products, a few per number of queries, 32 at most): the idle level of an app that has served.
            NormalSession(url, photo, seed=0, max_clicks=25).run(Phases(), threading.Barrier(1))
            idle_before = settled_mb(process.pid, args.settle_s)
            sampler = MemorySampler(process.pid)
            upload = large_upload(Path(folder) / "upload.png", BrowserProtocolClient(url).max_file_size)
            upload_mb = upload.stat().st_size / 2**20
            abuser = Abuser(url, large, upload, loops)
            preparation = abuser.prepare()  # before the normal sessions, which would starve it
            phases = Phases()
            ready = threading.Barrier(args.sessions + 1)
            sessions = [NormalSession(url, photo, 1 + index, args.think_ms / 1000) for index in range(args.sessions)]
            threads = [threading.Thread(target=s.run, args=(phases, ready), daemon=True) for s in sessions]
            for thread in threads:
                thread.start()
            ready.wait()
            half = 60 * args.minutes / (2 * args.rounds)
            for _ in range(args.rounds):
                phases.current = "alone"
                time.sleep(half)
                phases.current = "abused"
                abuser.active.set()
                time.sleep(half)
                phases.current = None  # clicks made while the abuser stops count for neither half
                abuser.pause()
            phases.stop.set()
            for thread in threads:
                thread.join(300)
            errors = [session.error for session in sessions if session.error is not None]
            if errors:
                raise RuntimeError("a normal session failed") from errors[0]
            abuser.finish()
            ended_at = time.monotonic()  # every page closed
            peak = sampler.finish()
            high_water = peak_memory_mb(process.pid)
            after = settled_mb(process.pid, args.settle_s)
            time.sleep(max(0.0, ended_at + release_grace_s - time.monotonic()))
            after_grace = settled_mb(process.pid, args.settle_s)

    def summary(label: str, times: list[float]) -> str:
        if not times:
            return f"{label}: no clicks"
        return (
            f"{label}: {len(times)} clicks, median {1000 * statistics.median(times):.0f} ms, "
            f"p95 {1000 * percentile_95(times):.0f} ms"
        )

    alone = [t for s in sessions for phase, t in s.times if phase == "alone"]
    abused = [t for s in sessions for phase, t in s.times if phase == "abused"]
    print(
        f"abuse benchmark: {args.sessions} normal sessions on a {width}x{height} photo (browser client, think time "
        f"{args.think_ms} ms), abuser loops {', '.join(loops)} on a {abuse_width}x{abuse_height} image and "
        f"{upload_mb:.1f}-MB uploads; {args.minutes:g} minutes in {args.rounds} round(s)"
    )
    print(summary("normal sessions without the abuser", alone))
    print(summary("normal sessions beside the abuser", abused))
    if alone and abused:
        print(f"p95 beside / without the abuser: {percentile_95(abused) / percentile_95(alone):.2f}")
    for index, session in enumerate(sessions):
        parts = [
            f"{label} p95 {1000 * percentile_95(times):.0f} ms"
            for label in ("alone", "abused")
            if (times := [t for phase, t in session.times if phase == label])
        ]
        print(f"  session {index + 1}: {', '.join(parts)}")
    for name in loops:
        seconds = abuser.seconds[name]
        median = f", median {statistics.median(seconds):.2f} s each" if seconds else ""
        print(f"abuser {name}: {abuser.done[name]} requests answered ({abuser.refused[name]} refused){median}")
    limits = abuser.limits
    print(
        f"abuser prepared in {preparation:.0f} s (limits read from the app: {limits.get('instances')} instances, "
        f"{limits.get('clicks')} clicks per image)"
    )
    print(
        f"app resident memory: idle before {idle_before:.0f} MB after a first visitor's 25 clicks ({idle_first:.0f} MB "
        f"after the first click), peak {peak:.0f} MB (high-water mark "
        f"{high_water:.0f} MB), {args.settle_s:g} s after the sessions ended {after:.0f} MB, "
        f"{args.settle_s:g} s after the app ended them ({release_grace_s:g} s after their pages closed) "
        f"{after_grace:.0f} MB"
    )


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
    abuse = parser.add_argument_group("--abuse: normal sessions with and without an abusive client")
    abuse.add_argument("--abuse", action="store_true", help="run the abuse benchmark (--sessions defaults to 4)")
    abuse.add_argument("--minutes", type=float, default=10.0, help="the whole run (default 10)")
    abuse.add_argument("--rounds", type=int, default=2, help="rounds of without / beside the abuser (default 2)")
    abuse.add_argument("--think-ms", type=float, default=0.0, help="normal sessions' pause between clicks (default 0)")
    abuse.add_argument(
        "--abuser", default="clicks,uploads,segment", help="the abuser's loops (default clicks,uploads,segment)"
    )
    abuse.add_argument("--abuse-size", default="1536x2048", help="the abuser's image, HEIGHTxWIDTH (default 1536x2048)")
    abuse.add_argument("--settle-s", type=float, default=30.0, help="idle seconds before a memory reading (default 30)")
    abuse.add_argument("--app-args", default="", help='more app.py arguments, e.g. "--max-clicks 100"')
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    if args.abuse:
        if "--sessions" not in (argv if argv is not None else sys.argv[1:]):
            args.sessions = 4
        run_abuse(args, height, width)
        return

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
