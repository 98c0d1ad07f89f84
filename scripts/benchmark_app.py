#!/usr/bin/env python
"""Click-to-overlay time of the Gradio app over HTTP: median and 95th percentile.

    python scripts/benchmark_app.py                      # app's default model, a 1200x1600 photo, 30 clicks
    python scripts/benchmark_app.py --model PATH --size 900x1200 --clicks 50

Starts `app.py` on localhost, uploads a generated photo-sized image, then times each `/click` request from
sending it to having the rendered overlay file on disk (gradio_client downloads it), as a browser would wait.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import running_app  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from gradio_client import Client, handle_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the app's default model)")
    parser.add_argument("--size", default="1200x1600", help="photo HEIGHTxWIDTH (default 1200x1600)")
    parser.add_argument("--clicks", type=int, default=30)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "photo.jpg"
        base = np.random.default_rng(0).normal(120, 30, (height, width, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(base).save(photo)
        with running_app(Path(args.model) if args.model else None) as url:
            client = Client(url, verbose=False)
            start = time.perf_counter()
            client.predict(handle_file(str(photo)), 0.5, 3, False, api_name="/upload")
            upload_seconds = time.perf_counter() - start
            rng = np.random.default_rng(1)
            times = []
            for index in range(args.clicks):
                if index and index % 5 == 0:
                    client.predict(0.5, 3, False, api_name="/add_instance")
                row, col = rng.uniform(0, height), rng.uniform(0, width)
                start = time.perf_counter()
                overlay, message, _ = client.predict(row, col, index % 7 == 6, 0.5, 3, False, api_name="/click")
                assert Path(overlay).is_file(), message
                times.append(time.perf_counter() - start)
    p95 = sorted(times)[max(0, int(round(0.95 * len(times))) - 1)]
    print(f"photo {width}x{height}, {args.clicks} clicks over HTTP (upload + image features: {upload_seconds:.2f} s)")
    print(f"click-to-overlay: median {1000 * statistics.median(times):.0f} ms, p95 {1000 * p95:.0f} ms")


if __name__ == "__main__":
    main()
