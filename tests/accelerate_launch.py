"""Run a script or module under `accelerate launch` with several CPU processes (gloo), as a user would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(target: list[str], num_processes: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes N <target...>` (target: a script path and its arguments, or
    `-m module ...`), one thread per process; fails with the processes' stderr unless `check` is False."""
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
    ]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *target], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """This process computes with one thread, as each launched process does (`OMP_NUM_THREADS=1`): the one-process
    run a test compares with is then made under the same conditions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
