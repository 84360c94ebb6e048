"""Accuracy against a cost: trainable parameters (log axis), inference latency, training time or peak memory;
one marker per impl, accuracy with its 95% CI, a measured cost with its sd over seeds, the reference drawn
faintly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from lora_lab.analysis.runs import NO_IMPL

MARKERS = {
    "ours": ("o", "tab:blue", "ours"),
    "peft": ("s", "tab:orange", "PEFT"),
    NO_IMPL: ("D", "tab:green", "head-only / full"),
}
X_AXES = {  # column: (file stem, axis label, log scale)
    "trainable_params": ("acc_vs_params", "trainable parameters (log scale)", True),
    "latency_x_base": (
        "acc_vs_latency",
        "inference latency, x the base model (merged where it merges)",
        False,
    ),
    "train_s": ("acc_vs_train_time", "training time per run (s), mean ± sd over seeds, one host kind", False),
    "peak_memory_mb": ("acc_vs_peak_memory", "peak memory of a run (MB), mean ± sd over seeds", False),
}
LABEL_GAP_PT = 11  # vertical distance between labels in the column right of the axes
CLAIM_LABEL_CHARS = 60  # claims wrap at this width so the forest plot keeps its axes
WIDE_PP = 60  # a forest plot's axis leaves out intervals wider than this
VERDICT_COLORS = {"holds": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}


def plot(
    table: pd.DataFrame, out: str | Path | None = None, title: str = "", x: str = "trainable_params"
) -> plt.Figure:
    """Draw the summary table's accuracy with 95% CIs as error bars against column `x` (a key of X_AXES; its
    sd over seeds, column `<x>_sd`, as horizontal bars where the table has it); with `out`, write <stem>.png
    and .pdf. Rows without a value of `x` are left out."""
    stem, xlabel, log_x = X_AXES[x]
    table = table.dropna(subset=[x])
    fig, ax = plt.subplots(figsize=(10, 5), dpi=150)
    if "reference_accuracy" in table and table["reference_accuracy"].notna().any():
        _draw_reference(ax, table, x)
    _draw_front(ax, table, x)
    for impl, (marker, color, name) in MARKERS.items():
        rows = table[table["impl"] == impl]
        if rows.empty:
            continue
        low = (rows["accuracy"] - rows["ci_low"]).fillna(0)
        high = (rows["ci_high"] - rows["accuracy"]).fillna(0)
        ax.errorbar(
            rows[x],
            rows["accuracy"],
            yerr=[low, high],
            xerr=rows[f"{x}_sd"].fillna(0) if f"{x}_sd" in rows else None,
            fmt=marker,
            color=color,
            mfc=color if impl != "peft" else "none",
            ms=7,
            capsize=3,
            label=name,
            zorder=3,
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.margins(x=0.08, y=0.08)
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.22, top=0.89)
    _label_points(ax, table, x)  # last: it places labels in the final coordinates
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{stem}.png")
        fig.savefig(out / f"{stem}.pdf", metadata={"CreationDate": None, "ModDate": None})
    return fig


def pareto_front(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """The rows no other row beats on both counts (as cheap or cheaper in `x`, more accurate), by their means,
    cheapest first."""
    rows = table.sort_values([x, "accuracy"], ascending=[True, False])
    return rows[rows["accuracy"] > rows["accuracy"].cummax().shift(fill_value=-1.0)]


def _draw_front(ax: plt.Axes, table: pd.DataFrame, x: str) -> None:
    front = pareto_front(table, x)
    ax.step(
        front[x], front["accuracy"], where="post", color="0.7", lw=1, zorder=1, label="Pareto front (means)"
    )


def _draw_reference(ax: plt.Axes, table: pd.DataFrame, x: str) -> None:
    """The paper's accuracies, faint, placed at our x values (our parameter counts: the reference model's
    own counts differ, DistilBERT-base), so only its accuracy on the y axis is comparable."""
    ref = table.drop_duplicates("configuration").dropna(subset=["reference_accuracy"])
    ax.scatter(
        ref[x],
        ref["reference_accuracy"],
        marker="_",
        s=300,
        color="gray",
        alpha=0.5,
        label="reference accuracy (DistilBERT-base, full IMDB), drawn at our parameter counts",
        zorder=2,
    )


def _label_points(ax: plt.Axes, table: pd.DataFrame, x: str) -> None:
    """One label per configuration, in a column right of the axes ordered by accuracy, each tied to its
    point by a thin line. Labels sit at least LABEL_GAP_PT apart, so they never overlap."""
    points = table.groupby("configuration", sort=False).agg(x=(x, "first"), y=("accuracy", "mean"))
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before converting to display coordinates
    to_points = 72 / ax.figure.dpi
    heights = {
        label: ax.transData.transform((r["x"], r["y"]))[1] * to_points for label, r in points.iterrows()
    }
    order = sorted(heights, key=heights.get)
    placed, previous = {}, None
    for label in order:  # bottom-up: each label at its point's height, or just above the one below it
        y = heights[label] if previous is None else max(heights[label], previous + LABEL_GAP_PT)
        placed[label] = previous = y
    overflow = previous - ax.bbox.y1 * to_points
    if overflow > 0:  # pushed past the top: shift the whole column down
        placed = {k: v - overflow for k, v in placed.items()}
    column_x = ax.bbox.x1 * to_points + 12
    for label in order:
        x, y = points.loc[label, "x"], points.loc[label, "y"]
        ax.annotate(
            label,
            (x, y),
            xytext=(column_x, placed[label]),
            textcoords="figure points",
            fontsize=8,
            va="center",
            ha="left",
            annotation_clip=False,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 0, "shrinkB": 4},
        )


def plot_findings(findings: pd.DataFrame, out: str | Path | None = None, title: str = "") -> plt.Figure:
    """A forest plot: one line per claim checked, its difference a - b with the interval that decides it,
    coloured by verdict, the claim's threshold (or equivalence margin) marked |; with `out`, also write
    findings.png."""
    findings = findings.dropna(subset=["ci_low"])  # claims without two seeds of both rows have no interval
    labels = [
        textwrap.fill(f"{'  without collapsed runs' if variant else claim} ({verdict})", CLAIM_LABEL_CHARS)
        for claim, variant, verdict in zip(
            findings["claim"], findings["variant"], findings["verdict"], strict=True
        )
    ]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10, 0.2 * lines + 0.3 * len(findings) + 1.6), dpi=150)
    for i, r in enumerate(findings.itertuples(index=False)):
        y = len(findings) - 1 - i
        color = VERDICT_COLORS[r.verdict]
        ax.errorbar(
            r.diff_pp,
            y,
            xerr=[[r.diff_pp - r.ci_low], [r.ci_high - r.diff_pp]],
            fmt="o",
            color=color,
            mfc="none" if r.variant else color,
            capsize=3,
        )
        marks = [-r.threshold_pp, r.threshold_pp] if r.two_sided else [r.threshold_pp]
        ax.scatter(marks, [y] * len(marks), marker="|", s=200, color="0.3", zorder=3)
        if pd.notna(r.reference_pp):
            ax.scatter([r.reference_pp], [y], marker="x", color="0.4", zorder=3)
    ax.axvline(0, color="0.5", lw=0.8)
    # bars wider than WIDE_PP (a collapsed run among few seeds) run off the axes rather than squash the rest
    narrow = findings[findings["ci_high"] - findings["ci_low"] < WIDE_PP]
    ends = [*narrow["ci_low"], *narrow["ci_high"], *findings["diff_pp"], *findings["threshold_pp"], 0.0]
    ends += [-t for t in findings.loc[findings["two_sided"], "threshold_pp"]]
    pad = 0.05 * (max(ends) - min(ends)) + 0.5
    ax.set_xlim(min(ends) - pad, max(ends) + pad)
    ax.set_yticks(range(len(findings)), labels[::-1], fontsize=8)
    ax.set_xlabel(
        "accuracy difference a - b (pp)\ndot and bar: ours with the interval that decides (its level: "
        "findings.md)\nopen dot: without collapsed runs; x: the reference's; |: threshold",
        fontsize=8,
    )
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x", lw=0.5)
    fig.tight_layout()
    if out is not None:
        fig.savefig(Path(out) / "findings.png")
    return fig


def plot_sources(sets: pd.DataFrame, out: str | Path | None = None, title: str = "") -> plt.Figure:
    """What sources.md compares, drawn: a panel per row, a column per source of randomness, one dot per run
    that varies that source alone and a bar at their mean accuracy; with `out`, also write sources.png."""
    rows = list(dict.fromkeys(zip(sets["label"], sets["impl"], strict=True)))
    fig, axes = plt.subplots(
        1, len(rows), figsize=(1.5 + 3.5 * len(rows), 4.5), dpi=150, sharey=True, squeeze=False
    )
    for ax, (label, impl) in zip(axes[0], rows, strict=True):
        panel = sets[(sets["label"] == label) & (sets["impl"] == impl)]
        for x, accuracy in enumerate(panel["accuracy_pp"]):
            ax.scatter([x] * len(accuracy), accuracy, s=20, color="tab:blue", alpha=0.7, zorder=3)
            ax.hlines(sum(accuracy) / len(accuracy), x - 0.25, x + 0.25, color="0.3", lw=1.2, zorder=2)
        names = [f"{s}\n({len(v)} values)" for s, v in zip(panel["source"], panel["values"], strict=True)]
        ax.set_xticks(range(len(panel)), names, fontsize=8)
        ax.set_xlim(-0.6, len(panel) - 0.4)
        ax.set_title(f"{label} ({impl})", fontsize=9)
        ax.grid(alpha=0.3, axis="y", lw=0.5)
    axes[0][0].set_ylabel("test accuracy (%): a dot per run, a bar at the mean")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if out is not None:
        fig.savefig(Path(out) / "sources.png")
    return fig
