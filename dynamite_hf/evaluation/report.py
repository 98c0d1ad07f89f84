"""Results of an evaluation run as the paper reports them: a table, JSON, and the IoU-per-click plot."""

from __future__ import annotations

import json
from pathlib import Path


def single_instance_table(dataset: str, metrics: dict) -> str:
    """Markdown in the layout of the paper's single-instance table (NoC@85 / NoC@90 rounded as the original
    prints them, NFO, the IoU at NoC and timing)."""
    return (
        "| dataset | samples | NoC@85 | NoC@90 | NFO@85 | NFO@90 | IoU@NoC85 | IoU@NoC90 | s/click (first) | "
        "s/click (later) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {dataset} | {metrics['samples']} | {metrics['NoC@85_printed']:.2f} | {metrics['NoC@90_printed']:.2f} | "
        f"{metrics['NFO@85']} | {metrics['NFO@90']} | {metrics['IoU@NoC@85']:.4f} | {metrics['IoU@NoC@90']:.4f} | "
        f"{metrics['first_click_s']:.3f} | {metrics['later_click_s']:.3f} |"
    )


def multi_instance_table(dataset: str, strategy: str, metrics: dict) -> str:
    """Markdown in the layout of the paper's multi-instance table (NCI / NFO / NFI / mIoU@85)."""
    return (
        "| dataset | strategy | images | objects | NCI | NCI_suc | NFO | NFI | mIoU@85 | s/click (first) | "
        "s/click (later) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {dataset} | {strategy} | {metrics['images']} | {metrics['objects']} | {metrics['NCI']:.2f} | "
        f"{metrics['NCI_suc']:.2f} | "
        f"{metrics['NFO']} | {metrics['NFI']} | {100 * metrics['mIoU']:.1f} | {metrics['first_click_s']:.3f} | "
        f"{metrics['later_click_s']:.3f} |"
    )


def _percent(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f} %"


def obedience_table(dataset: str, metrics: dict) -> str:
    """Markdown of the single-instance obedience report: corrective clicks obeyed, then per click index."""
    clicks = len(metrics["mIoU_per_click"])
    lines = [
        "| dataset | objects | positive clicks obeyed | negative clicks obeyed | clicks changing IoU by <= 0.005 | "
        "mIoU after 1 / 5 / last click |",
        "|---|---|---|---|---|---|",
        f"| {dataset} | {metrics['samples']} | {_percent(metrics['positive_obeyed'])} of {metrics['positive_clicks']} | "
        f"{_percent(metrics['negative_obeyed'])} of {metrics['negative_clicks']} | "
        f"{_percent(metrics['unchanged_clicks'])} | {metrics['mIoU_per_click'][0]:.3f} / "
        f"{metrics['mIoU_per_click'][min(4, clicks - 1)]:.3f} / {metrics['mIoU_per_click'][-1]:.3f} |",
        "",
        "| click | positive obeyed | negative obeyed | mean IoU after | mean IoU change |",
        "|---|---|---|---|---|",
    ]
    for index in range(clicks):
        lines.append(
            f"| {index + 1} | {_percent(metrics['positive_obeyed_per_click'][index])} | "
            f"{_percent(metrics['negative_obeyed_per_click'][index])} | {metrics['mIoU_per_click'][index]:.3f} | "
            f"{metrics['mean_iou_change_per_click'][index]:+.3f} |"
        )
    return "\n".join(lines)


def separation_table(dataset: str, metrics: dict) -> str:
    """Markdown of the multi-instance obedience report (one click per object, each a new instance)."""
    return (
        "| dataset | images | objects | instances containing their click | empty instances | mIoU |\n"
        "|---|---|---|---|---|---|\n"
        f"| {dataset} | {metrics['images']} | {metrics['objects']} | {_percent(metrics['instances_containing_click'])} | "
        f"{_percent(metrics['empty_instances'])} | {metrics['mIoU']:.3f} |"
    )


def save_report(output: Path, table: str, metrics: dict, details: dict) -> None:
    """`results.md` (the table), `results.json` (metrics and per-sample results) and, for single-instance
    runs, `miou_per_click.png`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(table + "\n")
    notes = {}
    if any(key.endswith("_printed") for key in metrics):
        notes["rounding"] = (
            "NoC@t is the exact mean; NoC@t_printed (in results.md) is the original's np.round(mean, 2), "
            "half-to-even on the scaled value"
        )
    (output / "results.json").write_text(json.dumps({"metrics": metrics, **notes, **details}, indent=1))
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
