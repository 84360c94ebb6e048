"""Which source of randomness moves accuracy: runs that vary one seed source at a time (the adapters' and
head's initialisation, the data order, the dropout masks; config.SEED_SOURCES), the others held fixed.

Per row and source: the variance of test accuracy over the source's values, with its chi-square interval, and
the source's share of the three. Pairs of sources are compared by the F interval of their variance ratio;
a pair whose interval holds 1 is inconclusive. The plan that fixed these: experiments/imdb_seed_sources/.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from lora_lab.analysis.plot import plot_sources
from lora_lab.atomic import write_text_atomic
from lora_lab.config import SEED_SOURCES

LEVEL = 0.95
DRAWS = 100_000  # posterior draws for a share's interval; fixed seed, so the report regenerates byte for byte


def varied(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row (label, impl) and source, the accuracies (pp) of the runs that vary that source alone: the
    largest set of runs that agree on the master seed and the other sources. Empty when no run sets a
    source apart from the master seed."""
    rows = []
    for (label, impl), group in runs.groupby(["label", "impl"], sort=False, dropna=False):
        seeds = pd.DataFrame(
            [
                {**(s if isinstance(s, dict) else {}), "seed": m}
                for s, m in zip(group["seeds"], group["seed"], strict=True)
            ],
            index=group.index,
        )
        if not set(SEED_SOURCES) <= set(seeds):  # records from before the seed settings
            continue
        if seeds[list(SEED_SOURCES)].eq(seeds["seed"], axis=0).all(axis=None):  # all follow the master seed
            continue
        for source in SEED_SOURCES:
            fixed = ["seed", *(s for s in SEED_SOURCES if s != source)]
            sets = [g for _, g in seeds.groupby(fixed) if g[source].nunique() >= 2]
            if not sets:
                continue
            chosen = max(sets, key=len)
            acc = 100 * group.loc[chosen.index, "accuracy"]
            rows.append(
                {
                    "label": label,
                    "impl": impl,
                    "source": source,
                    "values": tuple(sorted(chosen[source])),
                    "accuracy_pp": tuple(acc.loc[chosen.sort_values(source).index]),
                }
            )
    return pd.DataFrame(rows)


def shares(sets: pd.DataFrame, draws: int = DRAWS) -> pd.DataFrame:
    """Each source's variance (pp^2, ddof 1) with its chi-square interval, and its share of the row's total
    with the interval of the share when each variance is drawn from its posterior under the scale-invariant
    prior, (n - 1) s^2 / chi2(n - 1)."""
    out = []
    rng = np.random.default_rng(0)
    for _, row in sets.groupby(["label", "impl"], sort=False, dropna=False):
        df = np.array([len(a) - 1 for a in row["accuracy_pp"]])
        var = np.array([np.var(a, ddof=1) for a in row["accuracy_pp"]])
        low, high = _variance_interval(df, var)
        drawn = df * var / rng.chisquare(df, size=(draws, len(df)))
        drawn_share = drawn / drawn.sum(axis=1, keepdims=True)
        share_low, share_high = np.quantile(drawn_share, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
        total = var.sum()
        for i, (_, r) in enumerate(row.iterrows()):
            out.append(
                {
                    "label": r["label"],
                    "impl": r["impl"],
                    "source": r["source"],
                    "n": df[i] + 1,
                    "accuracy_mean": float(np.mean(r["accuracy_pp"])),
                    "variance": var[i],
                    "variance_low": low[i],
                    "variance_high": high[i],
                    "share": var[i] / total if total > 0 else np.nan,
                    "share_low": share_low[i],
                    "share_high": share_high[i],
                }
            )
    return pd.DataFrame(out)


def _variance_interval(df: np.ndarray | int, var: np.ndarray | np.floating | float) -> tuple:
    """The chi-square interval of a variance at LEVEL. The quantiles come from scipy.special, as
    scipy.stats.chi2.ppf computes them, without its per-call checks, which dominated the simulations."""
    upper, lower = (2 * special.gammaincinv(np.divide(df, 2), q) for q in ((1 + LEVEL) / 2, (1 - LEVEL) / 2))
    return df * var / upper, df * var / lower


def compare(table: pd.DataFrame) -> pd.DataFrame:
    """Each pair of sources in a row: the variance ratio a/b and its F interval, at LEVEL Bonferroni-adjusted
    over every pair of every row; `more` names the larger source where the interval excludes 1.

    A variance of exactly 0 decides nothing: accuracy on a fixed test set moves in steps of one example, so a
    few values can tie, and the F interval (which takes the variance as continuous) would call any ratio
    against it infinite. Such a pair is inconclusive, and says why."""
    pairs = [
        (label, impl, a, b)
        for (label, impl), row in table.groupby(["label", "impl"], sort=False, dropna=False)
        for a, b in itertools.combinations(row.itertuples(index=False), 2)
    ]
    alpha = (1 - LEVEL) / max(len(pairs), 1)
    out = []
    for label, impl, a, b in pairs:
        tied = [s.source for s in (a, b) if s.variance == 0]
        ratio = a.variance / b.variance if not tied else np.nan
        da, db = a.n - 1, b.n - 1
        low = ratio / special.fdtri(da, db, 1 - alpha / 2)  # F quantiles, as scipy.stats.f.ppf computes them
        high = ratio / special.fdtri(da, db, alpha / 2)
        more = a.source if low > 1 else b.source if high < 1 else None
        verdict = f"{more} moves accuracy more" if more else "inconclusive"
        if tied:
            verdict = f"inconclusive: every value of {' and '.join(tied)} gave the same accuracy (ties)"
        out.append(
            {
                "label": label,
                "impl": impl,
                "a": a.source,
                "b": b.source,
                "ratio": ratio,
                "ratio_low": low,
                "ratio_high": high,
                "level": 1 - alpha,
                "verdict": verdict,
            }
        )
    return pd.DataFrame(out)


def master_variance(runs: pd.DataFrame, labels: list[tuple[str, str]]) -> pd.DataFrame:
    """The variance of accuracy (pp^2) over the master seed, where every source follows it and the training
    subset moves too, for the rows given, with its chi-square interval."""
    out = []
    for label, impl in labels:
        acc = 100 * runs.loc[(runs["label"] == label) & (runs["impl"] == impl), "accuracy"].to_numpy()
        if len(acc) < 2:
            continue
        df, var = len(acc) - 1, np.var(acc, ddof=1)
        low, high = _variance_interval(df, var)
        out.append({"label": label, "impl": impl, "n": len(acc), "variance": var, "low": low, "high": high})
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, pairs: pd.DataFrame, master: pd.DataFrame | None) -> str:
    lines = [
        "| row | source | values | mean acc. (%) | variance (pp²), 95% interval | share, 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        spread = f"{r.variance:.3f} [{r.variance_low:.3f}, {r.variance_high:.3f}]"
        share = f"{r.share:.2f} [{r.share_low:.2f}, {r.share_high:.2f}]"
        if r.variance == 0:  # a tie, not a source that moves nothing: no interval to give
            spread, share = "0: every value gave the same accuracy", "—"
        row = f"{r.label} ({r.impl})"
        lines.append(f"| {row} | {r.source} | {r.n} | {r.accuracy_mean:.2f} | {spread} | {share} |")
    lines += ["", "| row | a / b | variance ratio, interval (level) | verdict |", "|---|---|---|---|"]
    for p in pairs.itertuples(index=False):
        ratio = "—" if np.isnan(p.ratio) else f"{p.ratio:.2f} [{p.ratio_low:.2f}, {p.ratio_high:.2f}]"
        level = f"{100 * p.level:.1f}%"
        lines.append(f"| {p.label} ({p.impl}) | {p.a} / {p.b} | {ratio} ({level}) | {p.verdict} |")
    if master is not None and len(master):
        lines += ["", "Over the master seed (every source and the training subset move):", ""]
        lines += [
            f"- {m.label} ({m.impl}): {m.variance:.3f} pp² [{m.low:.3f}, {m.high:.3f}], {m.n} seeds"
            for m in master.itertuples(index=False)
        ]
    return "\n".join(lines) + "\n"


def write(
    sets: pd.DataFrame, folder: str | Path, notes: list[str], master: pd.DataFrame | None, title: str = ""
) -> list[Path]:
    """sources.md, sources.csv and sources.png in `folder` from the runs that vary one source alone
    (`varied`), with the variance over the master seed of the same rows in `master` (another study's runs)
    beside them; nothing when no run varies a source apart from the master seed."""
    if sets.empty:
        return []
    table = shares(sets)
    pairs = compare(table)
    rows = list(dict.fromkeys(zip(table["label"], table["impl"], strict=True)))
    body = to_markdown(table, pairs, None if master is None else master_variance(master, rows))
    md, csv = Path(folder) / "sources.md", Path(folder) / "sources.csv"
    write_text_atomic(
        md, f"# Which source of randomness moves accuracy\n\n{body}\n" + "\n".join(notes) + "\n"
    )
    write_text_atomic(csv, table.to_csv(index=False, float_format="%.6g"))
    plot_sources(sets, folder, title)
    return [md, csv, Path(folder) / "sources.png"]
