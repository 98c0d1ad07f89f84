#!/usr/bin/env python
"""Click-to-overlay time of the Gradio app over HTTP: median and 95th percentile, per session.

    python scripts/benchmark_app.py                      # app's default model, a 1200x1600 photo, 30 clicks
    python scripts/benchmark_app.py --sessions 8         # 8 clients clicking at once, each its own session
    python scripts/benchmark_app.py --model PATH --size 900x1200 --clicks 50

Starts `app.py` on localhost, uploads a generated photo-sized image per session, then times each `/click`
request from sending it to having the rendered overlay file on disk (gradio_client downloads it), as a browser
would wait. With several sessions, every client uploads first, then all click at once; each session's median
and p95 show whether the queue serves them alike. The app's peak resident memory is printed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import app_process  # noqa: E402

LOOK = (0.5, 3, False)  # alpha, click radius, masks only


def percentile_95(times: list[float]) -> float:
    return sorted(times)[max(0, int(round(0.95 * len(times))) - 1)]


def run_session(url: str, photo: Path, seed: int, clicks: int, start_together: threading.Barrier) -> list[float]:
    """Upload `photo`, wait for every session to be ready, then click `clicks` times; the click times in s."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(handle_file(str(photo)), *LOOK, api_name="/upload")
    height, width = np.asarray(Image.open(photo)).shape[:2]
    rng = np.random.default_rng(seed)
    start_together.wait()
    times = []
    for index in range(clicks):
        if index and index % 5 == 0:
            client.predict(*LOOK, api_name="/add_instance")
        row, col = rng.uniform(0, height), rng.uniform(0, width)
        start = time.perf_counter()
        overlay, message, *_ = client.predict(row, col, index % 7 == 6, *LOOK, api_name="/click")
        assert overlay and Path(overlay).is_file(), message
        times.append(time.perf_counter() - start)
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
                    pool.submit(run_session, url, photo, 1 + index, args.clicks, barrier)
                    for index in range(args.sessions)
                ]
                sessions = [future.result() for future in futures]
            memory = peak_memory_mb(process.pid)

    print(f"photo {width}x{height}, {args.sessions} session(s) x {args.clicks} clicks over HTTP")
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
