"""scripts/benchmark.py end to end on a small input: its tables and the JSON, with counted FLOPs and rates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.mark.slow
def test_benchmark_prints_times_memory_flops_and_the_fraction_of_the_gemm_rate(tmp_path) -> None:
    output = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--presets", "mobilenet_v2", "--size", "64x96", "--repeats", "1"]
    completed = subprocess.run(command + ["--threads", "1", "--json", str(output)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    (result,) = json.loads(output.read_text())
    assert set(result["gflop"]) == {"image", "click_2", "click_5", "click_10"}
    assert all(value > 0 for value in result["gflop"].values())
    assert result["gflop"]["click_10"] > result["gflop"]["click_2"]  # more queries, more products
    assert all(rate > 0 for rate in result["gemm_gflops"])
    # The GEMM rate probed beside each stage's own timed runs is the one its fraction is set against.
    beside = result["gemm_gflops_beside"]
    assert set(beside) == set(result["gflop"]) and all(rate > 0 for rate in beside.values())
    assert 0 < result["features_mb"] < result["peak_5_mb"] <= result["peak_mb"]
    lines = completed.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| mobilenet_v2 | 64x96 |")]
    rate_rows = [line for line in rows if line.count("/") >= 9]  # GFLOP / GFLOP/s / fraction per stage
    assert len(rate_rows) == 1
    seconds = {"image": result["image_s"], **{f"click_{k}": v for k, v in result["click_s"].items()}}
    stage_cells = rate_rows[0].strip("| ").split(" | ")[3:7]
    for stage, cell in zip(("image", "click_2", "click_5", "click_10"), stage_cells, strict=True):
        gflop, rate, fraction = (float(value) for value in cell.split(" / "))
        assert fraction == round(result["gflop"][stage] / seconds[stage] / beside[stage], 2)
    # The boundary refinement's table: per image, then per click of 2, 5 and 10 instances, exact and preview.
    assert result["refine_image_s"] > 0
    assert set(result["refine_click_s"]) == set(result["refine_preview_s"]) == {"2", "5", "10"}
    assert all(seconds > 0 for seconds in [*result["refine_click_s"].values(), *result["refine_preview_s"].values()])
    (refine_row,) = [line for line in rows if line not in rate_rows]
    assert [float(cell) for cell in refine_row.strip("| ").split(" | ")[2:]] == [
        round(value, 3)
        for value in (
            result["refine_image_s"],
            *result["refine_click_s"].values(),
            *result["refine_preview_s"].values(),
        )
    ]


def test_flop_count_includes_the_in_place_products() -> None:
    """The inference path adds products into existing tensors (`addmm_`, `baddbmm_`), which `FlopCounterMode`
    does not count by itself: a click's FLOPs must not drop because a product moved in place."""
    import torch

    benchmark = load_script(SCRIPT)
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    batch_a, batch_b = torch.randn(3, 64, 32), torch.randn(3, 32, 16)
    out_of_place = benchmark.counted_flops(lambda: (torch.addmm(torch.zeros(16), a, b), torch.bmm(batch_a, batch_b)))
    in_place = benchmark.counted_flops(
        lambda: (torch.zeros(64, 16).addmm_(a, b), torch.zeros(3, 64, 16).baddbmm_(batch_a, batch_b))
    )
    assert out_of_place == in_place == 2 * 64 * 32 * 16 * 4


def test_flop_count_includes_the_fused_attention() -> None:
    """The MiT backbone's attention runs through `F.scaled_dot_product_attention` (on a CPU, a flash kernel
    that `FlopCounterMode` does not count by itself): its FLOPs are those of the two products it replaces."""
    import torch
    import torch.nn.functional as F

    benchmark = load_script(SCRIPT)
    q, k, v = torch.randn(2, 3, 50, 16), torch.randn(2, 3, 20, 16), torch.randn(2, 3, 20, 8)
    explicit = benchmark.counted_flops(lambda: (q @ k.transpose(-2, -1)).softmax(-1) @ v)
    fused = benchmark.counted_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert fused == explicit == 2 * 2 * 3 * 50 * 20 * (16 + 8)


@pytest.mark.slow
def test_benchmark_times_a_saved_model_folder_with_its_own_weights(tmp_path) -> None:
    """`--models FOLDER` times a saved model (its own config, e.g. a grown layer count, and weights); a folder
    without a config is refused by name before anything runs."""
    from tiny import tiny_model

    folder = tmp_path / "grown"
    model = tiny_model(encoder_layers=4, decoder_layers=2)
    model.save_pretrained(folder)
    output = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--models", str(folder), "--size", "64x96", "--repeats", "1"]
    completed = subprocess.run(command + ["--threads", "1", "--json", str(output)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    (result,) = json.loads(output.read_text())
    assert result["preset"] == str(folder)
    assert result["parameters_m"] == sum(p.numel() for p in model.parameters()) / 1e6  # its layers, not the preset's
    assert sum(line.startswith(f"| {folder} | ") for line in completed.stdout.splitlines()) == 3  # the three tables

    (tmp_path / "empty").mkdir()
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", str(tmp_path / "empty")], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--models" in refused.stderr and "config.json" in refused.stderr
