"""Accuracy against trainable parameters (log axis): one marker per impl, the reference drawn faintly."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from lora_lab.analysis.runs import NO_IMPL

MARKERS = {
    "ours": ("o", "tab:blue", "LoRA (ours)"),
    "peft": ("s", "tab:orange", "LoRA (PEFT)"),
    NO_IMPL: ("D", "tab:green", "head-only / full"),
}
LABEL_GAP_PT = 11  # vertical distance between stacked labels
LABEL_WIDTH_PT = 120  # points closer than this (horizontally) share a label column


def plot(table: pd.DataFrame, out: str | Path | None = None, title: str = "") -> plt.Figure:
    """Draw the summary table; with `out`, also write acc_vs_params.png and .pdf there."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=150)
    if "reference_accuracy" in table and table["reference_accuracy"].notna().any():
        _draw_reference(ax, table)
    for impl, (marker, color, name) in MARKERS.items():
        rows = table[table["impl"] == impl]
        if rows.empty:
            continue
        ax.errorbar(
            rows["trainable_params"],
            rows["accuracy"],
            yerr=rows["accuracy_std"].fillna(0),
            fmt=marker,
            color=color,
            mfc=color if impl != "peft" else "none",
            ms=7,
            capsize=3,
            label=name,
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.margins(x=0.12, y=0.08)
    _label_points(ax, table)  # last: it places labels in the final coordinates
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "acc_vs_params.png")
        fig.savefig(out / "acc_vs_params.pdf", metadata={"CreationDate": None, "ModDate": None})
    return fig


def _draw_reference(ax: plt.Axes, table: pd.DataFrame) -> None:
    """The paper's accuracies, faint, at our parameter counts (the reference model's counts differ)."""
    ref = table.drop_duplicates("configuration").dropna(subset=["reference_accuracy"])
    ax.scatter(
        ref["trainable_params"],
        ref["reference_accuracy"],
        marker="_",
        s=300,
        color="gray",
        alpha=0.5,
        label="reference (DistilBERT-base, full IMDB)",
        zorder=2,
    )


def _label_points(ax: plt.Axes, table: pd.DataFrame) -> None:
    """One label per configuration. Points closer than a label's width form a cluster whose labels stand in
    one column right of the cluster, ordered by accuracy, each tied to its point by a thin line."""
    points = table.groupby("configuration", sort=False).agg(
        x=("trainable_params", "first"), y=("accuracy", "mean")
    )
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before converting to display coordinates
    scale = 72 / ax.figure.dpi  # display pixels -> points
    xy = {label: ax.transData.transform((r["x"], r["y"])) * scale for label, r in points.iterrows()}
    clusters: list[list[str]] = []
    for label in sorted(xy, key=lambda k: xy[k][0]):
        if clusters and xy[label][0] - xy[clusters[-1][-1]][0] < LABEL_WIDTH_PT:
            clusters[-1].append(label)
        else:
            clusters.append([label])
    right_edge = ax.transData.transform((ax.get_xlim()[1], 0))[0] * scale
    for cluster in clusters:
        column_x = max(xy[k][0] for k in cluster) + 18
        left = column_x + LABEL_WIDTH_PT > right_edge  # no room on the right: label on the left instead
        heights = sorted(xy[k][1] for k in cluster)
        start = sum(heights) / len(heights) - (len(cluster) - 1) * LABEL_GAP_PT / 2
        for i, label in enumerate(sorted(cluster, key=lambda k: xy[k][1])):
            x, y = xy[label]
            dx = -12 if left else (column_x - x)
            ax.annotate(
                label,
                (points.loc[label, "x"], points.loc[label, "y"]),
                xytext=(dx, start + i * LABEL_GAP_PT - y),
                textcoords="offset points",
                fontsize=8,
                va="center",
                ha="right" if left else "left",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 0, "shrinkB": 4},
            )
