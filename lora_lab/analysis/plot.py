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
LABEL_GAP_PT = 11  # vertical space between labels that share an x position


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
    _label_points(ax, table)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.margins(x=0.12, y=0.08)
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
    """One label per configuration, beside its points; labels at the same x are stacked, not overlapped."""
    points = table.groupby("configuration", sort=False).agg(
        x=("trainable_params", "first"), y=("accuracy", "mean")
    )
    x_max = points["x"].max()
    for _, same_x in points.groupby("x"):
        same_x = same_x.sort_values("y")
        middle = (len(same_x) - 1) / 2
        for i, (label, row) in enumerate(same_x.iterrows()):
            left = row["x"] == x_max  # the right-most point is labelled on its left, inside the axes
            ax.annotate(
                label,
                (row["x"], row["y"]),
                xytext=(-10 if left else 10, (i - middle) * LABEL_GAP_PT),
                textcoords="offset points",
                fontsize=8,
                va="center",
                ha="right" if left else "left",
            )
