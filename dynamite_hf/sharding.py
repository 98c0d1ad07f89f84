"""Sharing items (evaluation samples, images to segment) among the processes of `accelerate launch`, and putting
their results back together in item order.

Under `accelerate launch --multi_gpu --num_processes N` (on a CPU-only machine too), item i goes to process i % N:
strided, so the large and small files that sit next to each other in a listing spread evenly and the shares take
about as long. Each process works through its share; the main process shows one progress bar of the items done by all processes, then gathers the
per-item results and restores the item order, so what it writes is what one process working through every item
would have written. Under a plain `python` run there is one process: it takes every item, with the work's own
progress bar, and nothing is gathered.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")

_run_numbers = itertools.count()  # every process starts the same runs in the same order: one counter key each


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the processes `accelerate launch` started.

    Attributes:
        rank: this process, `0..size - 1`; 0 is the main process, which gathers and writes.
        size: the number of processes.
        device: where this process computes (`cuda:<local rank>` on a GPU machine, `cpu` otherwise).
    """

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_sharded(self) -> bool:
        return self.size > 1

    def share(self, items: Iterable[Item]) -> tuple[list[int], list[Item], int]:
        """`(positions, items, total)`: the positions of the items this process takes (position i goes to process
        i % size), those items, and the number of items. `items` is read once and only this share is kept."""
        positions, taken, total = [], [], 0
        for position, item in enumerate(items):
            total = position + 1
            if position % self.size == self.rank:
                positions.append(position)
                taken.append(item)
        return positions, taken, total


def current_processes() -> ProcessGroup:
    """The process group of this run: one process unless started by `accelerate launch` (or `torchrun`) with
    several, in which case accelerate sets up the collective backend (gloo on CPU, NCCL on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup()
    try:
        from accelerate import PartialState
    except ImportError as error:
        raise ImportError(
            "a run with several processes (WORLD_SIZE > 1) needs accelerate: pip install accelerate"
        ) from error
    import torch

    # Without a GPU, Accelerate joins the processes over gloo only when told the run is on the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return ProcessGroup(state.process_index, state.num_processes, str(state.device))


class _ReportingShare(Sequence):
    """A process's share as the work sees it: iterating reports each item as done once the work asks for the next
    one (or finishes)."""

    def __init__(self, items: list, on_done: Callable[[], None]) -> None:
        self.items, self.on_done = items, on_done

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator:
        for item in self.items:
            yield item
            self.on_done()


def run_sharded(
    work: Callable[[Sequence[Item], bool], Result],
    items: Iterable[Item],
    processes: ProcessGroup,
    description: str,
    unit: str = "item",
) -> Result | None:
    """`work(share, progress)` on this process's share of `items`; returns on the main process the results of all
    shares merged in item order (`merge_in_order`), on the others None. With one process this is
    `work(list(items), True)`: the work shows its own progress bar. With several, the main process shows the items
    done by all processes, and every process waits until all items are done before the results are gathered (so a
    process that finishes early never sits in a collective long enough to time out)."""
    if not processes.is_sharded:
        return work(list(items), True)
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    positions, share, total = processes.share(items)
    # The process group's key-value store counts finished items without making the processes wait for each other.
    store, key = distributed_c10d._get_default_store(), f"dynamite_hf/items_done/{next(_run_numbers)}"
    bar = tqdm(
        total=total,
        desc=f"{description} ({processes.size} processes)",
        unit=unit,
        disable=not processes.is_main,
    )

    def show(done: int) -> None:
        bar.update(done - bar.n)

    result = work(_ReportingShare(share, lambda: show(store.add(key, 1))), False)
    while (done := store.add(key, 0)) < total:
        show(done)
        time.sleep(0.2)
    show(done)
    bar.close()
    gathered = [None] * processes.size if processes.is_main else None
    dist.gather_object((positions, result), gathered, dst=0)
    # An orderly end: without it, a process leaving while the main one still held the store's threads sometimes
    # aborted the main process at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    return merge_in_order(gathered) if processes.is_main else None


def _per_item_in_order(parts: Sequence[tuple[Sequence[int], list]]) -> list:
    pairs = [pair for positions, values in parts for pair in zip(positions, values, strict=True)]
    return [value for _, value in sorted(pairs, key=lambda pair: pair[0])]


def merge_in_order(parts: Sequence[tuple[Sequence[int], Any]]) -> Any:
    """One result from the results of disjoint shares, given as `(positions, result)` per share.

    A list result holds one value per item. In a dataclass result (the evaluation results: `sample_ids` and
    per-sample lists, timings, settings) list fields hold one value per item and come back in item order;
    dataclass fields (`Timings`: seconds per prediction, not per item) have their lists joined share after share;
    any other field is a setting every share has, taken from the first.
    """
    first = parts[0][1]
    if isinstance(first, list):
        return _per_item_in_order([(positions, result) for positions, result in parts])
    if not is_dataclass(first):
        raise TypeError(f"merge_in_order takes list or dataclass results, got {type(first).__name__}")
    merged = {}
    for field in fields(first):
        values = [getattr(result, field.name) for _, result in parts]
        if isinstance(values[0], list):
            merged[field.name] = _per_item_in_order([(p, v) for (p, _), v in zip(parts, values, strict=True)])
        elif is_dataclass(values[0]):
            lists = [f.name for f in fields(values[0]) if isinstance(getattr(values[0], f.name), list)]
            joined = {name: [x for v in values for x in getattr(v, name)] for name in lists}
            merged[field.name] = replace(values[0], **joined)
        else:
            merged[field.name] = values[0]
    return replace(first, **merged)
