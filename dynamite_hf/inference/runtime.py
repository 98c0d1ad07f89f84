"""Process-level settings that make CPU inference faster; for entry points (app, CLIs, benchmarks), not imports."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path


def tune_cpu_allocator(single_arena: bool = False) -> bool:
    """Keep large freed blocks in the heap instead of returning them to the OS (glibc only).

    A click allocates and frees many 60-MB temporaries at the demo's working size; glibc serves each from a
    fresh `mmap`, whose pages the kernel must fault in and zero every time. Disabling `mmap` for large blocks
    and never trimming the heap lets them be reused: about 20% off a click on a 2-core CPU, at the cost of the
    process keeping its peak memory until `release_free_memory`.

    `single_arena`: every thread allocates from glibc's main heap (unless `MALLOC_ARENA_MAX` is set), for a
    long-running server whose memory should fall back when it goes idle. glibc otherwise gives threads heaps of their
    own, and `malloc_trim` cannot return the free top of those: each thread that once ran a large computation (a
    server's worker threads take turns) keeps tens of MB for good. Returns False where it does not apply (not
    Linux/glibc).
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
        if single_arena and "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(m_arena_max, 1)
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except AttributeError:
        return False


def release_free_memory() -> bool:
    """Return the free pages of every heap to the OS (glibc's `malloc_trim`): the counterpart of `tune_cpu_allocator`
    for a process that has gone idle, so its resident memory falls back to what it holds. First, MKL (PyTorch's CPU
    matrix products) hands back the work buffers it keeps for reuse, about 20 MB after a few clicks: the next product
    allocates them again. Returns False where the heap does not apply (not Linux/glibc)."""
    free_buffers = _mkl_free_buffers()
    if free_buffers is not None:
        free_buffers()
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _mkl_free_buffers() -> Callable[[], None] | None:
    """MKL's `mkl_free_buffers` as PyTorch links it (its `mkl_serv_free_buffers`), or None where PyTorch was built
    without MKL."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        function = ctypes.CDLL(str(library)).mkl_serv_free_buffers
    except (OSError, AttributeError):
        return None
    function.restype = None
    return function


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
