"""How a run meets its launcher: the settings `accelerate launch` / `accelerate config` pass on, a launch that
started one process where several were asked for, the plan printed before the first step, and stopping on
Ctrl-C (or SIGTERM) at a step boundary with a checkpoint and the command that resumes it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The exit status of a process ended by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def precision_source(flag: str | None) -> str:
    """Where the run's mixed precision comes from: the script's flag, else what `accelerate launch` (its
    `--mixed_precision` or the `accelerate config` file) passed on, else Accelerate's default."""
    if flag is not None:
        return "--mixed-precision"
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return "accelerate launch / accelerate config"
    return "default"


def check_launched_processes(num_processes: int) -> None:
    """Stop a run that `accelerate launch` was asked to start on several processes but started on one.

    Without `--multi_gpu` (or a multi-GPU `accelerate config`), `accelerate launch --num_processes N` and a
    multi-CPU `accelerate config` run the script once; the launcher then exports `MASTER_ADDR` / `MASTER_PORT`
    (only when it was asked for more than one process or machine) but no `WORLD_SIZE`."""
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ
    asked_for_several = "MASTER_PORT" in os.environ and "WORLD_SIZE" not in os.environ
    if num_processes == 1 and launched_by_accelerate and asked_for_several:
        raise RuntimeError(
            "accelerate launch was asked for several processes (--num_processes, or an `accelerate config` with "
            "several) but started only this one: without --multi_gpu it runs the script once. Start them with "
            "`accelerate launch --multi_gpu --num_processes N train_accelerate.py ...` (on CPUs too: the "
            "processes join over gloo), or train on one process with `python train_accelerate.py ...`"
        )


def resume_command(num_processes: int, argv: list[str] | None = None) -> str:
    """The command line that continues this run: its own arguments with `--resume-from-checkpoint latest`."""
    argv = list(sys.argv if argv is None else argv)
    script, arguments = argv[0], argv[1:]
    for flag in ("--resume-from-checkpoint", "--resume_from_checkpoint"):
        while flag in arguments:
            position = arguments.index(flag)
            del arguments[position : position + 2]
        arguments = [a for a in arguments if not a.startswith(flag + "=")]
    arguments += ["--resume-from-checkpoint", "latest"]
    launcher = "python" if num_processes == 1 else "accelerate launch <the same launch options>"
    return f"{launcher} {shlex.join([script, *arguments])}"


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: Ctrl-C reaches the workers too; the main process alone decides to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopRequest:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a request to stop after the current optimiser step.

    A second Ctrl-C quits at once in a plain process. Under `accelerate launch --multi_gpu` (torchrun), the
    launcher forwards the terminal's Ctrl-C to every process (so each gets it twice) and kills them after its
    shutdown timeout (30 s), so repeated signals are ignored there."""

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._announce = announce
        self._repeat_quits = "TORCHELASTIC_RUN_ID" not in os.environ

    def _handle(self, number: int, frame) -> None:
        if self.requested:
            if self._repeat_quits and number == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_name = signal.Signals(number).name
        if self._announce:
            quit_hint = " (Ctrl-C again quits without saving)" if self._repeat_quits else ""
            text = f"\n{self.signal_name}: stopping after this step and saving a checkpoint{quit_hint}\n"
            # A raw write: the interrupted code may be inside a buffered write (tqdm's, every step) or hold the
            # logging lock, and print / logging from here would then fail or block.
            os.write(sys.stderr.fileno(), text.encode())

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM inside the block (from the main thread only; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def describe_run(
    *,
    num_processes: int,
    distributed_type: str,
    devices: list[str],
    threads: int,
    mixed_precision: str,
    precision_from: str,
    batch_size: int,
    gradient_accumulation_steps: int,
    start_step: int,
    max_steps: int,
    milestones: list[int],
    learning_rate: float,
    crop_size: int,
    model: str,
    datasets: list[tuple[str, int, int]],
    output_dir: str,
    checkpoint_every: int,
    checkpoints_total_limit: int,
) -> str:
    """The plan printed before the first step (see `train`)."""
    device_counts: dict[str, int] = {}
    for device in devices:
        device_counts[device] = device_counts.get(device, 0) + 1
    device_text = ", ".join(f"{d} x {n}" if n > 1 else d for d, n in device_counts.items())
    if mixed_precision == "no":
        precision = f"float32 (mixed precision no, from {precision_from})"
    else:
        precision = f"{mixed_precision} autocast, the pixel decoder and the loss in float32 (from {precision_from})"
    layout = f"{num_processes} ({distributed_type})" if num_processes > 1 else "1"
    effective = batch_size * num_processes * gradient_accumulation_steps
    drops = ", ".join(str(m) for m in milestones if m < max_steps) or "none"
    every = f"every {checkpoint_every} steps and " if checkpoint_every else ""
    kept = f"the newest {checkpoints_total_limit} kept" if checkpoints_total_limit else "all kept"
    lines = [
        f"processes    {layout}, {threads} thread(s) each; devices: {device_text}",
        f"precision    {precision}",
        f"batch        {batch_size} image(s) x {num_processes} process(es) x {gradient_accumulation_steps} "
        f"accumulation step(s) = {effective} a step, {crop_size} px crops",
        f"steps        {start_step} -> {max_steps}, learning rate {learning_rate:g} (x gamma at steps: {drops})",
        f"model        {model}",
    ]
    for name, images, instances in datasets:
        lines.append(f"dataset      {name}: {images} images, {instances} instances")
    lines += [
        f"checkpoints  {os.path.join(output_dir, 'checkpoints', 'step_N')}, {every}at the end ({kept})",
        f"final model  {output_dir} (save_pretrained, with train_summary.json)",
    ]
    return "\n".join(lines)
