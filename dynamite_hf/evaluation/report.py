"""Results of an evaluation run as the paper reports them: a table, JSON, and the IoU-per-click plot."""

from __future__ import annotations

import json
from pathlib import Path


def single_instance_table(dataset: str, metrics: dict) -> str:
    """Markdown in the layout of the paper's single-instance table (NoC@85 / NoC@90, plus NFO and timing)."""
    return (
        "| dataset | samples | NoC@85 | NoC@90 | NFO@85 | NFO@90 | s/click (first) | s/click (later) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {dataset} | {metrics['samples']} | {metrics['NoC@85']:.2f} | {metrics['NoC@90']:.2f} | "
        f"{metrics['NFO@85']} | {metrics['NFO@90']} | {metrics['first_click_s']:.3f} | {metrics['later_click_s']:.3f} |"
    )


def multi_instance_table(dataset: str, strategy: str, metrics: dict) -> str:
    """Markdown in the layout of the paper's multi-instance table (NCI / NFO / NFI / mIoU@85)."""
    return (
        "| dataset | strategy | images | objects | NCI | NFO | NFI | mIoU@85 | s/click (first) | s/click (later) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {dataset} | {strategy} | {metrics['images']} | {metrics['objects']} | {metrics['NCI']:.2f} | "
        f"{metrics['NFO']} | {metrics['NFI']} | {100 * metrics['mIoU']:.1f} | {metrics['first_click_s']:.3f} | "
        f"{metrics['later_click_s']:.3f} |"
    )


def save_report(output: Path, table: str, metrics: dict, details: dict) -> None:
    """`results.md` (the table), `results.json` (metrics and per-sample results) and, for single-instance
    runs, `miou_per_click.png`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps({"metrics": metrics, **details}, indent=1))
    curve = metrics.get("mIoU_per_click")
    if curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5, 3.5))
        axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3)
        axis.set_xlabel("clicks")
        axis.set_ylabel("mean IoU")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(output / "miou_per_click.png", dpi=120)
        plt.close(figure)
