"""Training throughput (samples per second) of train_accelerate.py, one process and several.

    python scripts/benchmark_training.py --dataset data/coco128 --crop-size 320 --steps 12

Runs the real script for `--steps` optimiser steps per setting (the first step, which pays for warm-up, is left
out of the figure) with the CPU preset (or `--preset`, from scratch), and prints a table. On GPUs, the paper's
setting per GPU: `--preset swin_tiny --crop-size 1024 --batch-size 2 --mixed-precision fp16 --processes 8`. On a CPU the threads are split between the processes
(`OMP_NUM_THREADS` = cores / processes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(processes: int, threads: int, args: argparse.Namespace, output: Path) -> dict:
    training = [str(ROOT / "train_accelerate.py"), "--dataset", *args.dataset, "--output-dir", str(output)]
    training += ["--preset", args.preset, "--crop-size", str(args.crop_size), "--batch-size", str(args.batch_size)]
    training += ["--max-steps", str(args.steps), "--checkpoint-every", "0", "--report-to", "none"]
    training += ["--max-num-interactions", str(args.max_num_interactions), "--mixed-precision", args.mixed_precision]
    # Only the CPU preset has ImageNet weights that install offline.
    training += ["--init", "imagenet" if args.preset == "mobilenet_v2" else "scratch"]
    if processes == 1:
        command = [sys.executable, *training]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_port", str(free_port()), *training]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((output / "train_summary.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", required=True, help="scripts/build_dataset.py output(s)")
    parser.add_argument("--preset", default="mobilenet_v2")
    parser.add_argument("--crop-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-num-interactions", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="fp16 needs GPUs")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for processes in args.processes:
            threads = max(cores // processes, 1)
            result = run(processes, threads, args, Path(folder) / f"p{processes}")
            rows.append((processes, threads, result["samples_per_second"]))
    print(
        f"preset {args.preset}, crop {args.crop_size}, batch {args.batch_size} per process, mixed precision "
        f"{args.mixed_precision}, {cores} cores"
    )
    print("| processes | threads each | samples / s | s / step |\n|---|---|---|---|")
    for processes, threads, speed in rows:
        print(f"| {processes} | {threads} | {speed:.2f} | {args.batch_size * processes / speed:.2f} |")


if __name__ == "__main__":
    main()
