"""Where the app's computations run: two lanes, each a thread that runs one computation at a time.

- The interactive lane, at normal priority: a click's preview of an image whose features are cached, while that image
  holds at most `INTERACTIVE_MAX_INSTANCES` instances and `INTERACTIVE_MAX_CLICKS` clicks.
- The background lane, at the lowest priority the OS gives a thread (Linux's `SCHED_IDLE`, else nice 19): everything
  else (decoding uploads, image features, exact masks, exports, the stateless API, clicks on large annotations).

The two lanes run at once, and the background lane runs only on CPU time no other thread wants: a visitor's heavy
requests use what the others' clicks leave, and no click waits for a heavy computation to finish. Within a lane, the
waiting computation of the session that has used the lanes least (seconds, halved every `USAGE_HALF_LIFE_S`) goes
first, so a session that floods a lane with requests is served after the others. When both lanes have been idle for
`IDLE_TRIM_S`, the process returns its free heap pages to the OS (`release_free_memory`), so its memory falls back
after a burst of work.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import cv2
import numpy as np

from ..inference.runtime import release_free_memory

# A preview of an image with more instances or clicks than this runs in the background lane. Measured with the
# bundled model (one thread, a 1024 x 768 preview): 1 instance 0.06 s, 10 instances and 20 clicks 0.27 s, 30 / 300
# 1.8 s; 10 instances of 10 clicks each (the paper's budget per instance) cost about 3 typical clicks.
INTERACTIVE_MAX_INSTANCES = 10
INTERACTIVE_MAX_CLICKS = 100
BACKGROUND_NICE = 19
USAGE_HALF_LIFE_S = 30.0
IDLE_TRIM_S = 5.0

Result = TypeVar("Result")


class UsageLedger:
    """Seconds of computation per owner (a session), halved every `half_life_s`."""

    def __init__(self, half_life_s: float = USAGE_HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self._usage: dict[str, tuple[float, float]] = {}  # owner -> (seconds, when)
        self._lock = threading.Lock()

    def usage(self, owner: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            seconds, when = self._usage.get(owner, (0.0, now))
        return seconds * 0.5 ** ((now - when) / self.half_life_s)

    def charge(self, owner: str, seconds: float) -> None:
        now = time.monotonic()
        decayed = self.usage(owner, now)
        with self._lock:
            self._usage[owner] = (decayed + seconds, now)
            if len(self._usage) > 1024:  # forget the owners whose usage has decayed away
                factor = {key: 0.5 ** ((now - when) / self.half_life_s) for key, (_, when) in self._usage.items()}
                self._usage = {k: v for k, v in self._usage.items() if v[0] * factor[k] > 1e-3}


@dataclass
class _Job:
    owner: str
    sequence: int
    function: Callable[[], object]
    future: Future = field(default_factory=Future)


class ComputeLane:
    """A thread that runs submitted computations one at a time, the least-used owner's first."""

    def __init__(self, name: str, ledger: UsageLedger, background: bool, on_idle: Callable[[], None] | None = None):
        self.name, self.ledger, self.background = name, ledger, background
        self.lowered_priority = False  # set by the thread once the OS has lowered its priority
        self.busy_until = 0.0  # when the last computation ended (monotonic), or inf while one runs
        self._on_idle = on_idle
        self._closed = False
        self._jobs: list[_Job] = []
        self._sequence = 0
        self._condition = threading.Condition()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"dynamite-{name}", daemon=True)
        self.thread.start()
        self._started.wait()

    def run(self, owner: str, function: Callable[[], Result]) -> Result:
        """`function()` run in this lane for `owner`; its result or its exception. Inside a computation of this
        lane's own (a computation that needs another), it runs at once."""
        if threading.current_thread() is self.thread:
            return function()
        with self._condition:
            self._sequence += 1
            job = _Job(owner, self._sequence, function)
            self._jobs.append(job)
            self._condition.notify()
        return job.future.result()

    def __len__(self) -> int:
        """Computations waiting (not the one running)."""
        with self._condition:
            return len(self._jobs)

    def close(self) -> None:
        """End the thread once the computations already submitted have run."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    def _serve(self) -> None:
        if self.background:
            self.lowered_priority = _lower_thread_priority()
        self._started.set()
        while True:
            with self._condition:
                while not self._jobs:
                    if self._closed:
                        return
                    if self._on_idle is None:
                        self._condition.wait()
                    elif not self._condition.wait(IDLE_TRIM_S):
                        self._on_idle()
                now = time.monotonic()
                job = min(self._jobs, key=lambda j: (self.ledger.usage(j.owner, now), j.sequence))
                self._jobs.remove(job)
                self.busy_until = float("inf")
            start = time.monotonic()
            try:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_result(job.function())
            except BaseException as error:  # handed to the caller, whatever it is; the lane goes on
                job.future.set_exception(error)
            finally:
                end = time.monotonic()
                self.ledger.charge(job.owner, end - start)
                self.busy_until = end
                # Not held until the next job: its result (an image's predictor and features, tens of MB) is the
                # caller's alone.
                del job


class ComputeLanes:
    """The interactive and background lanes and the usage they share (see the module docstring)."""

    def __init__(self) -> None:
        self.ledger = UsageLedger()
        self._trimmed = True
        self._collect = False
        _start_shared_pools()
        self.interactive = ComputeLane("interactive", self.ledger, background=False)
        self.background = ComputeLane("background", self.ledger, background=True, on_idle=self._release_if_idle)

    def run(self, owner: str, function: Callable[[], Result], background: bool) -> Result:
        """`function()` in the background lane (`background`) or the interactive one, for `owner`."""
        self._trimmed = False
        return (self.background if background else self.interactive).run(owner, function)

    def close(self) -> None:
        self.interactive.close()
        self.background.close()

    def memory_freed(self, cycles: bool = False) -> None:
        """Memory was freed outside the lanes' computations (a closed session's image features): return it to the
        OS at the next idle check too. `cycles`: objects that reference each other were dropped (an ended session's
        state, Gradio's copy of the page): Python frees them only when it next collects its cyclic garbage, which
        that check then does first (a full collection holds the interpreter for about 0.2 s, so only then)."""
        self._collect = self._collect or cycles
        self._trimmed = False

    def _release_if_idle(self) -> None:
        """Return the heap's free pages once both lanes have been idle for `IDLE_TRIM_S`."""
        idle_since = max(self.interactive.busy_until, self.background.busy_until)
        if not self._trimmed and time.monotonic() - idle_since >= IDLE_TRIM_S:
            self._trimmed = True
            if self._collect:
                self._collect = False
                gc.collect()
            release_free_memory()


def _start_shared_pools() -> None:
    """Start OpenCV's worker threads from the calling thread, before the background lane can.

    A thread inherits its creator's CPU priority, and OpenCV keeps one pool of workers for the whole process, made
    by the first call that splits its work. Made by the background lane, the workers would have its lowest priority,
    and every overlay drawn for a click would wait for them whenever the CPU is busy. (PyTorch's OpenMP teams are
    per calling thread: the background lane's own team is meant to have its priority.)"""
    cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (512, 512), interpolation=cv2.INTER_AREA)


def _lower_thread_priority() -> bool:
    """Give the calling thread (and the threads it starts later, such as its OpenMP team) the lowest CPU priority:
    Linux's `SCHED_IDLE` policy, else nice 19. Linux only: there a thread's policy and nice value are its own.

    `SCHED_IDLE` rather than nice 19 alone: a nice-19 thread keeps its core for up to a time slice (milliseconds)
    after a normal thread wakes up to run there, and a click wakes threads hundreds of times (its OpenMP team at every
    parallel region, Gradio's threads); a `SCHED_IDLE` thread gives the core up at once, and the kernel counts a core
    that runs only such threads as idle when it places a waking thread. Any process may move its own threads there."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        return False
    with contextlib.suppress(AttributeError, OSError):  # nice 19 stays where the policy is unavailable
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return True
