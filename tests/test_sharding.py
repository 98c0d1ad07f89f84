"""dynamite_hf.sharding in one process: the shares a process group makes, and results merged back in item order
equal a run over all items (the two-process runs are in test_evaluate_script.py and test_batch.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluation import samples

from dynamite_hf.evaluation import (
    evaluate_multi_instance,
    evaluate_single_instance,
    multi_instance_metrics,
    single_instance_metrics,
)
from dynamite_hf.evaluation.obedience import evaluate_instance_separation, evaluate_obedience, per_sample
from dynamite_hf.sharding import ProcessGroup, merge_in_order, run_sharded


class Shrinking:
    """The ground truth with its lowest rows cut off, fewer with each prediction; how many depends on the sample,
    so every sample has its own IoU curve."""

    def start(self, sample) -> None:
        self.sample, self.calls = sample, 0

    def predict(self, clicks) -> np.ndarray:
        self.calls += 1
        truth = self.sample.instance_map[None] == np.arange(1, self.sample.num_objects + 1)[:, None, None]
        cut = max(0, int(self.sample.sample_id[1:]) % 5 + 2 - self.calls)
        for mask in truth:
            rows = np.flatnonzero(mask.any(1))
            if cut and len(rows):
                mask[rows[-1] - cut + 1 :] = False
        return truth


def sharded(evaluate, items, size: int):
    parts = []
    for rank in range(size):
        positions, share, total = ProcessGroup(rank, size).share(iter(items))
        assert total == len(items)
        parts.append((positions, evaluate(share)))
    return merge_in_order(parts)


@pytest.mark.parametrize(("count", "size"), [(7, 3), (2, 3), (5, 1)])
def test_shares_are_strided_disjoint_and_cover_every_item(count, size) -> None:
    shares = [ProcessGroup(rank, size).share(f"item{i}" for i in range(count)) for rank in range(size)]
    for rank, (positions, items, total) in enumerate(shares):
        assert total == count and positions == list(range(rank, count, size))
        assert items == [f"item{i}" for i in positions]
    assert sorted(p for positions, _, _ in shares for p in positions) == list(range(count))


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_click_s")}


def test_single_instance_shares_merge_into_the_one_process_result() -> None:
    items = samples(count=7)
    evaluate = lambda share: evaluate_single_instance(Shrinking(), share, max_clicks=6, progress=False)  # noqa: E731
    whole, merged = evaluate(items), sharded(evaluate, items, 3)
    assert len({tuple(ious) for ious in whole.ious}) > 1  # the samples differ, so a wrong order would show
    assert merged.sample_ids == whole.sample_ids and merged.ious == whole.ious
    assert merged.max_clicks == whole.max_clicks and len(merged.timings.first) == len(items)
    assert len(merged.timings.later) == len(whole.timings.later)
    assert without_timings(single_instance_metrics(merged)) == without_timings(single_instance_metrics(whole))


@pytest.mark.parametrize("strategy", ["worst", "wlb"])
def test_multi_instance_shares_merge_into_the_one_process_result(strategy) -> None:
    items = samples(count=5, objects=3)
    evaluate = lambda share: evaluate_multi_instance(Shrinking(), share, strategy, progress=False)  # noqa: E731
    whole, merged = evaluate(items), sharded(evaluate, items, 2)
    assert len(set(whole.interactions)) > 1
    assert (merged.sample_ids, merged.final_ious, merged.interactions) == (
        whole.sample_ids,
        whole.final_ious,
        whole.interactions,
    )
    assert without_timings(multi_instance_metrics(merged)) == without_timings(multi_instance_metrics(whole))


def test_obedience_shares_merge_into_the_one_process_result() -> None:
    items = samples(count=5, objects=2)
    for evaluate in (
        lambda share: evaluate_obedience(Shrinking(), share, num_clicks=4, progress=False),
        lambda share: evaluate_instance_separation(Shrinking(), share, progress=False),
    ):
        whole, merged = evaluate(items), sharded(evaluate, items, 2)
        assert len({json.dumps(v) for v in per_sample(whole).values()}) > 1
        assert list(per_sample(merged).items()) == list(per_sample(whole).items())


def test_list_results_merge_in_item_order_and_other_results_are_refused() -> None:
    assert merge_in_order([([1, 3], ["b", "d"]), ([0, 2, 4], ["a", "c", "e"])]) == list("abcde")
    with pytest.raises(TypeError, match="list or dataclass results, got dict"):
        merge_in_order([([0], {"a": 1})])


def test_one_process_runs_the_work_on_every_item_with_its_own_progress_bar() -> None:
    calls = []
    result = run_sharded(
        lambda share, progress: calls.append((list(share), progress)) or "done", iter("abc"), ProcessGroup(), "x"
    )
    assert result == "done" and calls == [(["a", "b", "c"], True)]
