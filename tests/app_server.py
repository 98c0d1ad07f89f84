"""Start `app.py` on localhost in a subprocess for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(
    model_dir: Path | None, max_sessions: int = 8, timeout: float = 120.0, extra_args: list[str] | None = None
):
    """The app's URL while it runs (`extra_args`: more `app.py` arguments, such as limits)."""
    with app_process(model_dir, max_sessions, timeout, extra_args=extra_args) as (url, _):
        yield url


@contextlib.contextmanager
def app_process(
    model_dir: Path | None,
    max_sessions: int = 8,
    timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
):
    """`(url, subprocess.Popen)` of the app while it runs (the process for benchmarks that read its memory),
    stopped by SIGTERM as a container would be."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    env.update(extra_env or {})
    command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1"]
    command += ["--model", str(model_dir)] if model_dir is not None else []
    command += ["--port", str(port), "--max-sessions", str(max_sessions), *(extra_args or [])]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app exited early:\n{process.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app did not answer at {url} within {timeout} s") from None
                time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
